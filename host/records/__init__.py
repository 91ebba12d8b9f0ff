"""What a push leaves on the host: the run history, the printed report and its plots."""
