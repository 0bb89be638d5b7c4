"""kasou.service"""
