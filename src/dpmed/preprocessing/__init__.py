"""dpmed.preprocessing"""
