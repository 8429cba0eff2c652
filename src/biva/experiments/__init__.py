"""The paper's other experiments: complex 2-D densities (appendix D) and text (appendix E)."""
