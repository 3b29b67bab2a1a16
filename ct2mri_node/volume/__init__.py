"""CT datasets -> one 3D volume in HU on the CT's own grid, with geometry checks."""
