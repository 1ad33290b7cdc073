"""Tests of stage1_detect/."""
