"""dpmed.training"""
