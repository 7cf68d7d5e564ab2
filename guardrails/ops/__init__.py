"""What operators run: status, doctor, dashboard, alerts, and their shared plumbing."""
