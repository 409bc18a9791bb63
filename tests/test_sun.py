"""Sun position, Earth's shadow and eclipse fractions."""

import math

import numpy as np
import pytest

from mesh.ground import ecef_to_latlon
from mesh.orbit import EARTH_RADIUS_KM, Constellation, WalkerShell, iso_to_jd
from mesh.sun import (AU_KM, beta_angle_deg, constellation_sunlit, eclipse_fraction_circular, eclipse_fractions,
                      illumination, sun_position_ecef, sun_position_teme, sunlit)


def _dec_deg(v):
    return math.degrees(math.asin(v[2] / np.linalg.norm(v)))


def test_sun_at_j2000():
    # Astronomical Almanac: at J2000.0 the Sun is at declination −23.03°, 0.9833 AU
    s = sun_position_teme(2451545.0)
    assert _dec_deg(s) == pytest.approx(-23.03, abs=0.02)
    assert np.linalg.norm(s) / AU_KM == pytest.approx(0.9833, abs=2e-4)


def test_equinox_and_solstice():
    assert abs(_dec_deg(sun_position_teme(iso_to_jd("2024-03-20T03:06:00Z")))) < 0.02   # March equinox 2024
    assert _dec_deg(sun_position_teme(iso_to_jd("2024-06-20T20:51:00Z"))) == pytest.approx(23.44, abs=0.02)
    # perihelion in early January, aphelion in early July
    assert np.linalg.norm(sun_position_teme(iso_to_jd("2026-01-03T17:00:00Z"))) / AU_KM == pytest.approx(0.9833, abs=3e-4)
    assert np.linalg.norm(sun_position_teme(iso_to_jd("2026-07-06T17:00:00Z"))) / AU_KM == pytest.approx(1.0167, abs=3e-4)


def test_sun_is_over_greenwich_near_noon_utc():
    # the equation of time stays within ±17 min, i.e. the subsolar point within ±4.5° of 0° at 12:00 UTC
    for day in ("2026-01-01", "2026-04-15", "2026-11-03"):
        _, lon, _ = ecef_to_latlon(sun_position_ecef(iso_to_jd(f"{day}T12:00:00Z")))
        assert abs(lon) < 4.5


def test_shadow_geometry():
    sun = np.array([AU_KM, 0.0, 0.0])
    r = EARTH_RADIUS_KM + 550
    pts = np.array([[r, 0, 0], [-r, 0, 0], [0, r, 0], [-r, EARTH_RADIUS_KM * 1.01, 0], [-r, EARTH_RADIUS_KM * 0.99, 0]])
    assert illumination(pts, sun, "cylindrical").tolist() == [1, 0, 1, 1, 0]
    con = illumination(pts, sun, "conical")
    assert con[0] == 1 and con[1] == 0 and con[2] == 1
    # near the cylinder's edge the conical model shows a penumbra, brightening outwards
    edge = np.array([[-r, EARTH_RADIUS_KM + d, 0] for d in (-30.0, -5.0, 5.0, 30.0)])
    f = illumination(edge, sun, "conical")
    assert np.all(np.diff(f) >= 0) and 0 < f[1] < 1 and 0 < f[2] < 1
    with pytest.raises(ValueError, match="shadow model"):
        illumination(pts, sun, "disc")


def test_sunlit_agrees_with_the_anti_sun_point():
    jd = iso_to_jd("2026-01-01T00:00:00Z")
    s = sun_position_ecef(jd)
    u = s / np.linalg.norm(s)
    r = EARTH_RADIUS_KM + 550
    assert sunlit(np.array([u * r, -u * r]), jd).tolist() == [True, False]


def test_eclipse_fraction_matches_the_analytic_value():
    # a satellite in a circular orbit: sampled fraction vs 2θ/2π from its beta angle
    epoch = iso_to_jd("2026-03-20T12:00:00Z")
    for inc in (0.0, 53.0, 97.6):
        c = Constellation([WalkerShell(planes=1, sats_per_plane=1, altitude_km=550, inclination_deg=inc, phasing=0)],
                          epoch)
        r = c.propagate_teme(np.array([0.0, 10.0]))[0]
        beta = beta_angle_deg(np.cross(r[0], r[1]), sun_position_teme(epoch))
        sampled = eclipse_fractions(c, 0.0, samples=1440)[0]
        assert sampled == pytest.approx(eclipse_fraction_circular(550, beta), abs=0.01), (inc, beta)
    # at β = 0 a 550 km orbit is in shadow asin(R/r)/π of the time, ~37%
    assert eclipse_fraction_circular(550, 0.0) == pytest.approx(math.asin(EARTH_RADIUS_KM / (EARTH_RADIUS_KM + 550)) / math.pi)
    assert eclipse_fraction_circular(550, 80.0) == 0.0


def test_constellation_sunlit_and_fractions_are_consistent():
    c = Constellation([WalkerShell(planes=6, sats_per_plane=8, altitude_km=550, inclination_deg=53)],
                      iso_to_jd("2026-01-01T00:00:00Z"))
    lit = constellation_sunlit(c, 0.0)
    assert 0 < lit.sum() < len(c)
    f = eclipse_fractions(c, 0.0, samples=180)
    assert np.all((f >= 0) & (f <= 0.4))
    # same plane, same fraction (the Sun barely moves in one orbit)
    for p in range(6):
        assert np.ptp(f[p * 8:(p + 1) * 8]) <= 2 / 180 + 1e-9
    assert np.array_equal(eclipse_fractions(c, 0.0, samples=180, indices=[9, 3]), f[[9, 3]])
