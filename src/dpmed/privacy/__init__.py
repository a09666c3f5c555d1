"""dpmed.privacy"""
