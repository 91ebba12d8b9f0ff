"""What host and device must agree on, torch-free: manifest, spool protocol, signing, what each runtime can
build and which model file it reads, the validation rule, the budget, the benchmark's defaults and the
agent's command line. The host imports this package, and of the agent only its admin interface
(``agent/admin.py``, for the local device: what the SSH transport runs as ``edgekit-agent`` commands)."""
