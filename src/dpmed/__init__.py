"""dpmed: the cost of privacy in medical-imaging AI, measured reproducibly."""

__version__ = "0.1.0"
