"""The agent process: the daemon that takes jobs, its admin commands, the spool on disk and its store."""
