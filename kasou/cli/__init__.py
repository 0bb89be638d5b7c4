"""kasou.cli"""
