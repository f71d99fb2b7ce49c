"""listgate: a milter that rejects, at SMTP time, posts a mailing list would not accept."""

__version__ = "0.1.0"
