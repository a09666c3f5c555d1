"""dpmed.models"""
