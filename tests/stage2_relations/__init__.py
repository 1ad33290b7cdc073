"""Tests of stage2_relations/."""
