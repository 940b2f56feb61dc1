"""SystemVerilog backend: memory images, crossbar macro model, datapaths, testbenches."""
