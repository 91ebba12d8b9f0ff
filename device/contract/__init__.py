"""What host and device must agree on, torch-free: manifest, spool protocol, signing, which model file a
backend reads, the validation rule, the budget and the agent's command line. The host imports this package
and nothing else of the agent."""
