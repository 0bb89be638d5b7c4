"""kasou.api"""
