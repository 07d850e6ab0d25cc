"""Reports built from results: sweep outputs, playbook-study analysis and report, the pipeline report, test evaluation."""
