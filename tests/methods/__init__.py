"""Tests of the rival methods (PatchCore, WinCLIP)."""
