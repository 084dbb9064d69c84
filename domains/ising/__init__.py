"""2-D Ising model across temperatures (thermodynamic maps, Herron et al. PNAS 2024): Wolff + Metropolis Monte
Carlo and lattice files (``data``), Kaufman's exact finite-lattice solution (``exact``), observables with
bootstrap errors and T_c estimates (``metrics``), the Domain (``adapter``; the backbone is the images UNet with
circular padding).

Submodules are imported on use (``from sciddpm.domains.ising.exact import kaufman``).
"""
