"""The `tokprob` command line and what runs the flows from outside Python: its commands,
the Prefect environment it prepares (server, profile, logging), deployments and the
reports server. The flows themselves are in flows/."""
