"""kasou.store"""
