"""dpmed.demo"""
