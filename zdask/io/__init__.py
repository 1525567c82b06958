"""File input and output: FITS header scan, lazy pixel reads, the Zarr store, user outputs."""
