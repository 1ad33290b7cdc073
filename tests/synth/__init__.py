"""Tests of synth/."""
