"""Tests of hwdnal-agent (a package so that its conftest never shadows another suite's)."""
