"""dpmed.reporting"""
