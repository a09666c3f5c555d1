"""dpmed.io"""
