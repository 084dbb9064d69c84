"""Backbone torsions (φ, ψ) on the torus across temperatures: alanine dipeptide parallel tempering, mdtraj in and
out, MBAR baseline (``adapter.TorsionsDomain``)."""
