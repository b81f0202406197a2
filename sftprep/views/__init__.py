"""Human views of the data: `sftprep inspect` and the run report. No Beam, no torch."""
