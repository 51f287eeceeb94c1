"""Email intake adapter: IMAP polling, SMTP receiving, MIME parsing, loop detection and reply sending."""
