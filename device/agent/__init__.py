"""The agent process: the daemon that takes jobs (daemon.py), the admin interface both transports call
(admin.py), its command line (main.py), the agent root on disk (spool.py) and its store (store.py)."""
