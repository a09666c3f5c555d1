"""dpmed.evaluation"""
