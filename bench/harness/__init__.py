"""farts-edge benchmark harness: scenarios, the result schema, calibration, projections, reports
(`python -m bench`; see bench/__main__.py)."""
