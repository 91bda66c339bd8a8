"""A small synthetic Kilosort 4 dataset on which real bombcell produces every label, and the demo.

    python -m phy_bc_reason_demo [DIR] [--split] [--no-gui]

builds the dataset in DIR (default ``./demo-data``), runs bombcell 0.94 on it, writes the reasons
with ``phy-bc-reason export`` and opens phy on it (or prints the reasons when there is no display).

The dataset is a plain Kilosort 4 output folder (``params.py``, ``spike_times.npy``,
``templates.npy``, ...) next to a SpikeGLX-style raw recording (``demo_g0_t0.imec0.ap.bin`` with
its ``.meta``: 32 sites on two columns at 20 um pitch plus a sync channel, 30 kHz, int16 at
Neuropixels 1.0 gain).  phy's Template GUI and bombcell read it as they would a real recording.
Every unit is designed, from bombcell's own metric code, to fail chosen criteria (see
``DESIGNS``): bombcell labels them GOOD, MUA (by six different criteria), NOISE (by all eight
waveform criteria, spatial decay in both directions, and a unit with too few spikes to compute
any metric), NON-SOMA by each of its two routes, and NON-SOMA GOOD / NON-SOMA MUA in split mode;
one template has no spikes (label "").  ``demo_dataset.json`` in the folder lists each cluster's
design, expected labels and failed criteria.  Build ~3 s, bombcell ~5 s (2 cores).

With ``n_units`` (benchmarks), e.g. 3000: ~10 s to build; bombcell then takes minutes.

Public API::

    make_dataset(path, seed=0, n_units=None) -> Path
    run_bombcell(dataset_dir, split_non_somatic=False, quiet=True, **param_overrides) -> Path
    main(argv=None) -> int

Generation uses numpy only.  bombcell is imported only inside ``_bombcell_worker``, which
``run_bombcell`` runs in a child process: ``import bombcell`` costs seconds and prints to stdout.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import phy_bc_reason_plugin

__all__ = ["make_dataset", "run_bombcell", "main", "DESIGNS"]

# ------------------------------------------------------------------------------------------------
# Recording constants
# ------------------------------------------------------------------------------------------------

SAMPLE_RATE = 30_000
N_SITES = 32                        # recorded sites, two columns
N_CHANNELS_DAT = N_SITES + 1        # + one SpikeGLX sync channel, as in a real .ap.bin
COLUMN_X_UM = (11.0, 43.0)          # 32 um apart: within bombcell's 33 um spatial-decay tolerance
PITCH_UM = 20.0                     # < 30 um, else bombcell switches computeSpatialDecay off
# Neuropixels 1.0: 0.6 V range, 10-bit (imMaxInt 512), AP gain 500 -> 2.34375 uV per bit.  Written
# into the .meta file, from which bombcell reads it (without a gain, rawAmplitude is NaN and the
# amplitude and SNR tests are silently skipped).
AI_RANGE_MAX_V, MAX_INT, AP_GAIN = 0.6, 512, 500
GAIN_UV = AI_RANGE_MAX_V * 1e6 / MAX_INT / AP_GAIN
NOISE_UV = 8.0                      # rms background noise, a typical AP-band value
# 130 s: bombcell's presence ratio uses 60 s bins from the first to the last spike of the whole
# recording (bins start at np.arange(t0, t_end, 60)), so > 120 s gives two full bins and a unit
# silent in one of them has a presence ratio of 0.5 < 0.7.
DURATION_S = 130.0
N_T, T_TROUGH = 61, 20              # Kilosort 4 template length and trough sample (nt0min)
N_PC, N_PC_CHANNELS = 3, 8          # pc_features: 3 PCs on the 8 best channels of the template
KS4_DUPLICATE_MS = 0.25             # Kilosort 4 removes same-unit spikes closer than this

BIN_NAME = "demo_g0_t0.imec0.ap.bin"
META_NAME = "demo_g0_t0.imec0.ap.meta"
MANIFEST = "demo_dataset.json"      # marks a folder as ours, and records what each unit is for
BOMBCELL_DIRNAME = "bombcell"


def probe_geometry():
    """Site positions (N_SITES, 2) in um: two columns, 20 um pitch, site i at row i // 2."""
    rows, cols = np.divmod(np.arange(N_SITES), 2)
    return np.c_[np.take(COLUMN_X_UM, cols), PITCH_UM * rows].astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Waveform shapes
# ------------------------------------------------------------------------------------------------
# Each shape is a time course over the 61 template samples, trough at sample 20 scaled to -1.
# bombcell measures the template on its peak channel (bombcell.quality_metrics.waveform_shape):
# peaks and troughs are scipy find_peaks with a prominence of 0.2 x max|w| (first 4 samples
# ignored), widths at half prominence, duration from the largest |w| to the opposite extremum
# after it, baseline flatness from samples 0-9.  The comments give the values bombcell measures.

def _g(amp, centre, sigma):
    t = np.arange(N_T, dtype=float)
    return amp * np.exp(-(t - centre) ** 2 / (2 * sigma ** 2))


def _shape(name):
    t = np.arange(N_T, dtype=float)
    if name == "somatic":      # regular spiking: trough width 6.2, small early peak, duration 367 us
        w = _g(.12, 15, 2.2) + _g(-1, 20, 2.9) + _g(.35, 31, 5.5)
    elif name == "narrow":     # fast spiking: duration 233 us, large-ish repolarisation (0.48)
        w = _g(.10, 16, 1.8) + _g(-1, 20, 1.9) + _g(.45, 27, 3.5)
    elif name == "positive_first":  # axon-like: first peak 1.23 x the trough (route B);
        # first peak 4.6 samples wide, so the four-test route A does not apply
        w = _g(1.2, 14, 2.2) + _g(-1, 20, 2.4) + _g(.25, 28, 4)
    elif name == "narrow_biphasic":  # axon-like, route A: trough/first peak 2.3 < 5, first peak
        # 1.7 samples wide < 4, trough 2.7 wide < 5, first/second peak 4.3 > 3; 0.43 < 0.8 (not B)
        w = _g(.45, 17, 0.9) + _g(-1, 20, 1.1) + _g(.1, 26, 3)
    elif name == "ringing":    # damped oscillation (a line-noise / stimulation artefact): 4 peaks,
        w = -np.cos(2 * np.pi * (t - 20) / 9) * np.exp(-np.abs(t - 20) / 9)  # 4 troughs
    elif name == "double_trough":  # two troughs (two overlapping units), 2 peaks: only nTroughs
        w = _g(.05, 14, 2) + _g(-1, 18, 1.8) + _g(-.8, 27, 1.8) + _g(.3, 38, 4)
    elif name == "spike_artifact":  # fast biphasic glitch: trough to peak 2 samples = 67 us
        w = _g(-1, 20, 0.9) + _g(.75, 22.2, 0.9)
    elif name == "slow_wave":  # trough then a slow rise still growing at the window end: 1333 us
        w = _g(.08, 15, 2) + _g(-1, 20, 3) + _g(.3, 62, 12)
    elif name == "baseline_ramp":  # somatic on a slow ramp: |w| 0.48 in samples 0-9 (> 0.3)
        w = _shape("somatic") - .45 * np.clip((12 - t) / 12, 0, 1)
    elif name == "big_repolarisation":  # peak after the trough 0.94 x the trough (> 0.8)
        w = _g(.1, 15, 2) + _g(-1, 20, 2.5) + _g(.88, 28, 3.5)
    else:
        raise ValueError(f"unknown waveform shape {name!r}")
    return w / -w[T_TROUGH - 2:T_TROUGH + 3].min()


# ------------------------------------------------------------------------------------------------
# Unit designs
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Design:
    """One unit of the demo dataset and what bombcell is expected to make of it.

    ``fails`` lists every criterion (named as in ``phy_bc_reason_plugin.RULES``:
    ``metric<op><param>`` or ``nPeaks is NaN``) the unit fails, with one exception: the four
    width/ratio tests of non-somatic route A count only together (bombcell ANDs them), so they are
    listed only for units that fail all four; many somatic units fail one or two of them alone.
    ``label`` and ``split_label`` are bombcell's expected labels without and with
    ``splitGoodAndMua_NonSomatic``.
    """
    name: str
    label: str
    split_label: str
    fails: tuple = ()
    shape: str = "somatic"
    site: int = 0                   # the site the unit sits next to
    offset_um: tuple = (3.0, 4.0)   # unit position relative to that site
    footprint_um: float = 30.0      # amplitude decays as exp(-distance / footprint_um)
    amp_uv: float = 100.0           # trough amplitude on the peak channel
    rate_hz: float = 12.0
    refractory_ms: float = 2.5
    n_spikes: int = None            # exact spike count (overrides rate_hz)
    active_s: tuple = None          # (start, stop): fires only then
    contamination: float = 0.0      # extra Poisson spikes, as a fraction of rate_hz
    amp_cv: float = 0.12            # spike-to-spike amplitude variation
    truncated: bool = False         # only spikes above the mean amplitude were detected
    follows: str = None             # fires 0.5 ms after some spikes of this unit
    follow_fraction: float = 0.75
    follow_lag: int = 15            # samples


# Spike counts: the sliding refractory-period test (rpv_method "ibl_sliding") only *confirms* a
# unit clean when it has enough spikes; with a 2.5 ms refractory period and 130 s that takes
# about 900 spikes, so every unit meant to pass has >= 1100.  A unit with fewer spikes gets
# fractionRPVs_estimatedTauR = 1 and is MUA even without violations (unless keepUncertainRPVUnits).
DESIGNS = (
    # --- GOOD: somatic shapes, clean spike trains ---------------------------------------------
    Design("good_regular_1", "GOOD", "GOOD", site=4, amp_uv=120, rate_hz=12),
    Design("good_regular_2", "GOOD", "GOOD", site=9, offset_um=(-4, 6), amp_uv=85, rate_hz=10,
           refractory_ms=3.0, footprint_um=26),
    Design("good_fast_spiking_1", "GOOD", "GOOD", shape="narrow", site=13, amp_uv=95, rate_hz=20,
           refractory_ms=1.8),
    Design("good_driver", "GOOD", "GOOD", site=18, amp_uv=150, rate_hz=16,
           footprint_um=34),  # mua_low_snr follows it
    Design("good_regular_3", "GOOD", "GOOD", site=23, offset_um=(5, -3), amp_uv=70, rate_hz=11,
           footprint_um=25),
    Design("good_regular_4", "GOOD", "GOOD", site=27, amp_uv=180, rate_hz=11, footprint_um=38),
    Design("good_fast_spiking_2", "GOOD", "GOOD", shape="narrow", site=30, offset_um=(2, -5),
           amp_uv=60, rate_hz=25, refractory_ms=1.5),
    Design("good_regular_5", "GOOD", "GOOD", site=6, offset_um=(-3, -6), amp_uv=100, rate_hz=14),
    # --- MUA: somatic shapes, each fails one MUA criterion ------------------------------------
    Design("mua_refractory_violations", "MUA", "MUA",
           ("fractionRPVs_estimatedTauR>maxRPVviolations",),
           site=11, amp_uv=110, rate_hz=10, contamination=0.35),
    # 150 spikes: >= 50, so metrics are computed; the RPV test cannot confirm so few spikes clean
    Design("mua_few_spikes", "MUA", "MUA",
           ("nSpikes<minNumSpikes", "fractionRPVs_estimatedTauR>maxRPVviolations"),
           site=16, amp_uv=90, n_spikes=150),
    Design("mua_low_presence", "MUA", "MUA", ("presenceRatio<minPresenceRatio",),
           site=20, amp_uv=100, rate_hz=25, active_s=(0.0, 40.0)),
    Design("mua_spikes_missing", "MUA", "MUA",
           ("percentageSpikesMissing_gaussian>maxPercSpikesMissing",),
           site=25, offset_um=(-2, 3), amp_uv=55, rate_hz=12, truncated=True),
    Design("mua_low_amplitude", "MUA", "MUA", ("rawAmplitude<minAmplitude",),
           site=2, amp_uv=22, rate_hz=12),  # 30 uV peak to peak, < 40 uV; SNR is still fine
    # Fires 0.5 ms after good_driver on the same site, so the driver's spike sits in the baseline
    # window bombcell takes the noise from (samples 0-9 of the raw snippet): SNR < 5, although its
    # raw amplitude is large.
    Design("mua_low_snr", "MUA", "MUA", ("signalToNoiseRatio<minSNR",),
           shape="narrow", site=18, offset_um=(4, -2), amp_uv=90, follows="good_driver"),
    # --- NOISE: each fails one (or, for the ringing artefact, two) noise criteria -------------
    Design("noise_ringing", "NOISE", "NOISE", ("nPeaks>maxNPeaks", "nTroughs>maxNTroughs"),
           shape="ringing", site=8, amp_uv=80, rate_hz=10),
    Design("noise_double_trough", "NOISE", "NOISE", ("nTroughs>maxNTroughs",),
           shape="double_trough", site=14, amp_uv=90, rate_hz=10),
    Design("noise_too_short", "NOISE", "NOISE", ("waveformDuration_peakTrough<minWvDuration",),
           shape="spike_artifact", site=21, amp_uv=120, rate_hz=10),
    Design("noise_too_long", "NOISE", "NOISE", ("waveformDuration_peakTrough>maxWvDuration",),
           shape="slow_wave", site=28, amp_uv=90, rate_hz=10),
    Design("noise_baseline", "NOISE", "NOISE",
           ("waveformBaselineFlatness>maxWvBaselineFraction",),
           shape="baseline_ramp", site=3, amp_uv=90, rate_hz=10),
    # (a peak after the trough > 0.8 x the trough is also route B's big peak: NOISE wins)
    Design("noise_repolarisation", "NOISE", "NOISE",
           ("scndPeakToTroughRatio>maxScndPeakToTroughRatio_noise",
            "mainPeakToTroughRatio>maxMainPeakToTroughRatio_nonSomatic"),
           shape="big_repolarisation", site=17, amp_uv=90, rate_hz=10),
    # common-mode artefact: the same amplitude on every site, spatial decay slope ~0.002 < 0.01
    Design("noise_flat_footprint", "NOISE", "NOISE",
           ("spatialDecaySlope<minSpatialDecaySlopeExp",),
           site=15, footprint_um=500, amp_uv=60, rate_hz=10),
    # single-site glitch: decays within a few um, slope ~0.15 > 0.1
    Design("noise_single_site", "NOISE", "NOISE",
           ("spatialDecaySlope>maxSpatialDecaySlopeExp",),
           site=26, offset_um=(9, 5), footprint_um=3, amp_uv=100, rate_hz=10),
    # 30 spikes (1-49): bombcell sets every metric to NaN, and NaN nPeaks is NOISE
    Design("noise_few_spikes", "NOISE", "NOISE", ("nPeaks is NaN", "nSpikes<minNumSpikes"),
           site=24, amp_uv=100, n_spikes=30),
    # --- NON-SOMA: axon-like shapes, by route B (big first peak) and route A (four tests) -----
    Design("nonsoma_positive_good", "NON-SOMA", "NON-SOMA GOOD",
           ("mainPeakToTroughRatio>maxMainPeakToTroughRatio_nonSomatic",),
           shape="positive_first", site=7, amp_uv=90, rate_hz=15),
    Design("nonsoma_narrow_good", "NON-SOMA", "NON-SOMA GOOD",
           ("troughToPeak2Ratio<minTroughToPeak2Ratio_nonSomatic",
            "mainPeak_before_width<minWidthFirstPeak_nonSomatic",
            "mainTrough_width<minWidthMainTrough_nonSomatic",
            "peak1ToPeak2Ratio>maxPeak1ToPeak2Ratio_nonSomatic"),
           shape="narrow_biphasic", site=12, amp_uv=100, rate_hz=18, refractory_ms=2.0),
    Design("nonsoma_positive_mua", "NON-SOMA", "NON-SOMA MUA",
           ("mainPeakToTroughRatio>maxMainPeakToTroughRatio_nonSomatic",
            "presenceRatio<minPresenceRatio"),
           shape="positive_first", site=22, amp_uv=80, rate_hz=22, active_s=(75.0, 130.0)),
    Design("nonsoma_narrow_mua", "NON-SOMA", "NON-SOMA MUA",
           ("troughToPeak2Ratio<minTroughToPeak2Ratio_nonSomatic",
            "mainPeak_before_width<minWidthFirstPeak_nonSomatic",
            "mainTrough_width<minWidthMainTrough_nonSomatic",
            "peak1ToPeak2Ratio>maxPeak1ToPeak2Ratio_nonSomatic",
            "nSpikes<minNumSpikes", "fractionRPVs_estimatedTauR>maxRPVviolations"),
           shape="narrow_biphasic", site=29, amp_uv=100, n_spikes=200),
    # --- a template Kilosort kept but assigned no spikes: bombcell's label is "" --------------
    Design("empty_template", "", "", site=10, n_spikes=0),
)


def _check_designs():
    names = [d.name for d in DESIGNS]
    assert len(set(names)) == len(names)
    for d in DESIGNS:
        assert d.follows is None or names.index(d.follows) < names.index(d.name)


_check_designs()


# ------------------------------------------------------------------------------------------------
# Building the dataset
# ------------------------------------------------------------------------------------------------

@dataclass
class _Unit:
    design: Design
    index: int         # of the design in DESIGNS
    copy: int          # 0 for the base dataset, > 0 for the repeats of a large dataset
    site: int
    samples: np.ndarray = None   # spike times in samples
    scales: np.ndarray = None    # spike amplitudes relative to the design amplitude


def _layout(n_units):
    """The units to build: all designs, or n_units of them cycling through the designs (a copy
    moves along the probe, so repeated designs do not sit on top of each other)."""
    n = len(DESIGNS) if n_units is None else int(n_units)
    if n < 1:
        raise ValueError("n_units must be at least 1")
    units = []
    for i in range(n):
        copy, j = divmod(i, len(DESIGNS))
        design = DESIGNS[j]
        # move by 3 rows per copy; a follower keeps its driver's site as both move together
        site = (design.site + 6 * copy) % N_SITES
        units.append(_Unit(design, j, copy, site))
    return units


def _renewal_train(rng, rate, refractory_s, start, stop):
    """Spike times (s) of a renewal process: a dead time then an exponential wait, mean rate."""
    if rate <= 0 or stop <= start:
        return np.zeros(0)
    mean_wait = max(1.0 / rate - refractory_s, 1e-4)
    n = int((stop - start) * rate * 1.2) + 20
    t = start + rng.uniform(0, 1.0 / rate) + np.cumsum(refractory_s + rng.exponential(mean_wait, n))
    while t[-1] < stop:  # rarely needed: extend the draw
        more = t[-1] + np.cumsum(refractory_s + rng.exponential(mean_wait, n))
        t = np.r_[t, more]
    return t[t < stop]


def _spike_train(unit, rng, by_name, n_samples):
    """Spike samples and amplitude scales of one unit."""
    d = unit.design
    fs = SAMPLE_RATE
    start, stop = d.active_s or (0.0, DURATION_S)
    refractory = d.refractory_ms / 1000
    if d.follows is not None:
        driver = by_name[(d.follows, unit.copy)]
        keep = rng.random(driver.samples.size) < d.follow_fraction
        samples = driver.samples[keep] + d.follow_lag + rng.integers(-1, 2, keep.sum())
    elif d.n_spikes is not None:
        if d.n_spikes == 0:
            samples = np.zeros(0, np.int64)
        else:  # draw a longer refractory train and keep n of its spikes: stays refractory
            t = _renewal_train(rng, 3.0 * d.n_spikes / (stop - start), refractory, start, stop)
            t = np.sort(rng.choice(t, d.n_spikes, replace=False))
            samples = np.round(t * fs).astype(np.int64)
    else:
        t = _renewal_train(rng, d.rate_hz, refractory, start, stop)
        if d.contamination:  # spikes of other neurons, with no refractory period relative to it
            n_extra = rng.poisson(d.contamination * d.rate_hz * (stop - start))
            t = np.sort(np.r_[t, rng.uniform(start, stop, n_extra)])
        samples = np.round(t * fs).astype(np.int64)
    samples = np.sort(samples)
    # Kilosort 4 drops same-unit spikes closer than its duplicate window; keep clear of the file
    # edges so every spike has a full waveform in the raw data
    dup = int(np.ceil(KS4_DUPLICATE_MS / 1000 * fs))
    keep = np.r_[True, np.diff(samples) > dup] if samples.size else np.zeros(0, bool)
    samples = samples[keep]
    samples = samples[(samples >= 2 * N_T) & (samples < n_samples - 2 * N_T)]
    if d.truncated:  # a unit near the detection threshold: the lower half of its amplitude
        #              distribution was never detected, which bombcell's gaussian fit sees
        s = rng.normal(1.0, 0.3, 4 * samples.size + 10)
        scales = s[s > 1.0][:samples.size]
    else:
        scales = np.clip(rng.normal(1.0, d.amp_cv, samples.size), 0.4, None)
    return samples, scales


def _waveforms(units, positions):
    """Per unit, the mean raw waveform in bits (n_units, N_T, N_SITES): shape x footprint."""
    out = np.zeros((len(units), N_T, N_SITES))
    for i, u in enumerate(units):
        d = u.design
        centre = positions[u.site] + np.asarray(d.offset_um)
        dist = np.hypot(*(positions - centre).T)
        footprint = np.exp(-(dist - dist.min()) / d.footprint_um)  # 1 on the nearest site
        out[i] = _shape(d.shape)[:, None] * footprint[None, :] * (d.amp_uv / GAIN_UV)
    return out


def _noise_table(seed):
    """2**22 samples (140 s) of unit-variance noise, smoothed over 3 samples as band-limited AP
    noise is.  Every channel of every chunk is a random slice of it: drawing 125 million normal
    numbers would take seconds, and the slices are as good as independent for bombcell."""
    x = np.random.default_rng([seed, 7]).standard_normal(2 ** 22 + 2, np.float32)
    return (x[:-2] + 2 * x[1:-1] + x[2:]) / np.float32(np.sqrt(6.0))


def _write_raw(path, units, waveforms, n_samples, seed, full):
    """The int16 raw recording: noise, plus every spike of every unit (full=True) or, for large
    benchmark datasets, only the 100 spikes per unit that bombcell averages (far faster)."""
    noise_bits = np.float32(NOISE_UV / GAIN_UV)
    table = _noise_table(seed)
    chunk = 5 * SAMPLE_RATE
    # each unit's spikes are written on its n_sites largest sites: all of them normally; the 8
    # that matter to bombcell (peak channel and around) in a large dataset, to save time
    n_sites = N_SITES if full else 8
    site_idx = np.argsort(-np.abs(waveforms).max(axis=1), axis=1, kind="stable")[:, :n_sites]
    wf = np.take_along_axis(waveforms, site_idx[:, None, :], axis=2).astype(np.float32)
    times, scales, unit = [], [], []
    for i, u in enumerate(units):
        s, a = u.samples, u.scales
        if not full and s.size > 100:  # bombcell's pick: np.linspace over the unit's spikes
            pick = np.linspace(0, s.size - 1, 100, dtype=int)
            s, a = s[pick], a[pick]
        times.append(s), scales.append(a), unit.append(np.full(s.size, i))
    order = np.argsort(np.concatenate(times), kind="stable")
    times, scales, unit = (np.concatenate(x)[order] for x in (times, scales, unit))
    k = np.arange(N_T)
    with open(path, "wb") as f:
        for c, s0 in enumerate(range(0, n_samples, chunk)):
            n = min(chunk, n_samples - s0)
            buf = np.empty((n, N_CHANNELS_DAT), np.float32)
            offsets = np.random.default_rng([seed, 7, c]).integers(0, table.size - n, N_SITES)
            buf[:, :N_SITES] = np.stack([table[o:o + n] for o in offsets]).T * noise_bits
            # spikes: every (sample, site) a spike touches, summed with bincount, which (unlike
            # fancy-index +=) adds up overlapping spikes correctly
            lo, hi = np.searchsorted(times, [s0 - N_T, s0 + n + N_T])
            batch = 4_000_000 // (N_T * n_sites)  # spikes per batch: bounds the memory used
            for b in range(lo, hi, batch):
                sl = slice(b, min(b + batch, hi))
                rows = (times[sl] - T_TROUGH - s0)[:, None] + k[None, :]          # (S, N_T)
                vals = scales[sl, None, None].astype(np.float32) * wf[unit[sl]]   # (S, N_T, sites)
                ok = (rows >= 0) & (rows < n)
                sites = np.broadcast_to(site_idx[unit[sl]][:, None, :], vals.shape)[ok]
                flat = rows[ok][:, None] * N_SITES + sites
                buf[:, :N_SITES] += np.bincount(flat.ravel(), vals[ok].ravel(),
                                                minlength=n * N_SITES).reshape(n, N_SITES)
            # SpikeGLX sync channel: a 1 Hz square wave on bit 6
            buf[:, N_SITES] = 64 * (((s0 + np.arange(n)) // SAMPLE_RATE) % 2)
            np.clip(np.round(buf), -32768, 32767, out=buf)
            f.write(buf.astype("<i2").tobytes())


def _write_meta(path, n_samples):
    """A SpikeGLX .ap.meta with what bombcell reads: gain, channel counts."""
    size = n_samples * N_CHANNELS_DAT * 2
    lines = {
        "typeThis": "imec", "imDatPrb_type": "0", "imDatPrb_pn": "PRB_1_4_0480_1",
        "imAiRangeMax": AI_RANGE_MAX_V, "imAiRangeMin": -AI_RANGE_MAX_V, "imMaxInt": MAX_INT,
        "imChan0apGain": AP_GAIN, "imSampRate": SAMPLE_RATE, "nSavedChans": N_CHANNELS_DAT,
        "snsApLfSy": f"{N_SITES},0,1", "snsSaveChanSubset": "all",
        "fileSizeBytes": size, "fileTimeSecs": n_samples / SAMPLE_RATE,
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()), encoding="ascii")


def _pc_features(units, templates, amplitudes, spike_unit, seed):
    """pc_features (n_spikes, N_PC, N_PC_CHANNELS) and pc_feature_ind, as Kilosort would compute
    them: each spike's waveform projected on temporal PCs, on the template's best channels."""
    n_templates = templates.shape[0]
    # temporal PCs of all template waveforms on all channels
    x = templates.transpose(0, 2, 1).reshape(-1, N_T)
    basis = np.linalg.svd(x[np.abs(x).max(axis=1) > 0], full_matrices=False)[2][:N_PC]  # (N_PC, N_T)
    ptp = np.ptp(templates, axis=1)                                    # (n_templates, N_SITES)
    ind = np.argsort(-ptp, axis=1, kind="stable")[:, :N_PC_CHANNELS].astype(np.uint32)
    proj = np.einsum("kt,utc->uck", basis, templates)                  # (n_templates, sites, N_PC)
    mean = np.take_along_axis(proj, ind[:, :, None].astype(np.int64), axis=1)  # (n_t, chans, N_PC)
    feats = amplitudes[:, None, None] * mean[spike_unit]
    # whitened noise projected on an orthonormal basis: unit variance, scaled like the templates
    rng = np.random.default_rng([seed, 11])
    feats += rng.standard_normal(feats.shape, np.float32) * (NOISE_UV / GAIN_UV)
    return feats.transpose(0, 2, 1).astype(np.float32), ind


def _clear_old_outputs(path):
    """Make `path` an empty folder, refusing to touch a non-empty folder that is not ours."""
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a folder")
        if any(path.iterdir()):
            if not (path / MANIFEST).exists():
                raise FileExistsError(f"{path} is not empty and holds no demo dataset; "
                                      "choose an empty or new folder")
            for p in path.iterdir():  # a previous demo: stale bombcell caches would be reused
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    path.mkdir(parents=True, exist_ok=True)


def make_dataset(path, seed=0, n_units=None):
    """Write the demo Kilosort 4 dataset into the folder `path` and return it as a Path.

    Deterministic for a given seed.  With `n_units` (e.g. 3000, for benchmarks), the designs are
    repeated along the probe until there are that many templates; the raw file then holds only
    the spikes bombcell samples, and pc_features are not written (phy opens it without them).
    A folder holding a previous demo dataset is emptied first; any other non-empty folder is an
    error.
    """
    path = Path(path)
    _clear_old_outputs(path)
    # mark the folder as ours at once, so that a rebuild after an interrupted build may clear it
    (path / MANIFEST).write_text(json.dumps({"generator": "phy_bc_reason_demo", "complete": False}),
                                 encoding="utf-8")
    large = n_units is not None and int(n_units) > len(DESIGNS)
    units = _layout(n_units)
    n_samples = int(DURATION_S * SAMPLE_RATE)
    positions = probe_geometry()

    by_name = {}
    for i, u in enumerate(units):
        # one random stream per unit, so a unit's spikes do not depend on the other units
        rng = np.random.default_rng([seed, u.copy, u.index])
        u.samples, u.scales = _spike_train(u, rng, by_name, n_samples)
        by_name[(u.design.name, u.copy)] = u
    # Cluster ids: Kilosort 4 numbers its clusters along the probe, so the designs end up mixed
    # (a follower's train was drawn after its driver's, above, whatever their ids)
    units.sort(key=lambda u: (u.copy, u.site // 2, u.index))

    # Templates: Kilosort 4 saves whitened, unit-norm templates and per-spike amplitudes
    # (template x amplitude = the whitened spike).  With an identity whitening matrix the product
    # is the raw spike in bits, so phy's amplitudes and bombcell's unwhitened templates agree.
    raw_wf = _waveforms(units, positions)
    norms = np.sqrt((raw_wf ** 2).sum(axis=(1, 2)))
    templates = (raw_wf / norms[:, None, None]).astype(np.float32)

    n_spk = np.array([u.samples.size for u in units])
    spike_unit = np.repeat(np.arange(len(units)), n_spk)
    samples = np.concatenate([u.samples for u in units])
    amplitudes = np.concatenate([u.scales * nrm for u, nrm in zip(units, norms)])
    order = np.argsort(samples, kind="stable")  # Kilosort's files are sorted by spike time
    samples, spike_unit, amplitudes = samples[order], spike_unit[order], amplitudes[order]

    _write_raw(path / BIN_NAME, units, raw_wf, n_samples, seed, full=not large)
    _write_meta(path / META_NAME, n_samples)

    np.save(path / "spike_times.npy", samples.astype(np.int64))
    np.save(path / "spike_templates.npy", spike_unit.astype(np.int32))
    np.save(path / "spike_clusters.npy", spike_unit.astype(np.int32))
    np.save(path / "amplitudes.npy", amplitudes.astype(np.float32))
    np.save(path / "templates.npy", templates)
    np.save(path / "whitening_mat.npy", np.eye(N_SITES, dtype=np.float32))
    np.save(path / "whitening_mat_inv.npy", np.eye(N_SITES, dtype=np.float32))
    np.save(path / "channel_map.npy", np.arange(N_SITES, dtype=np.int32))
    np.save(path / "channel_positions.npy", positions)
    flat = templates.reshape(len(units), -1)
    np.save(path / "similar_templates.npy", (flat @ flat.T).astype(np.float32))  # cosine (unit norm)
    if not large:
        feats, ind = _pc_features(units, templates, amplitudes.astype(np.float32), spike_unit, seed)
        np.save(path / "pc_features.npy", feats)
        np.save(path / "pc_feature_ind.npy", ind)
    # ops.npy: bombcell reads Kilosort 4's duplicate spike window from it (its tauC)
    np.save(path / "ops.npy", np.array({"settings": {"duplicate_spike_ms": KS4_DUPLICATE_MS,
                                                     "n_chan_bin": N_CHANNELS_DAT,
                                                     "fs": SAMPLE_RATE}}, dtype=object),
            allow_pickle=True)
    # Kilosort 4's own labels, from its contamination estimate: here, just the designs that are
    # contaminated or sparse
    with open(path / "cluster_KSLabel.tsv", "w", encoding="utf-8", newline="\n") as f:
        f.write("cluster_id\tKSLabel\n")
        for i, u in enumerate(units):
            mua = u.design.contamination > 0 or (u.design.n_spikes is not None)
            f.write(f"{i}\t{'mua' if mua else 'good'}\n")
    (path / "params.py").write_text(
        f"dat_path = {BIN_NAME!r}\n"   # relative to params.py: the folder can be moved
        f"n_channels_dat = {N_CHANNELS_DAT}\n"
        "dtype = 'int16'\n"
        "offset = 0\n"
        f"sample_rate = {float(SAMPLE_RATE)}\n"
        "hp_filtered = False\n", encoding="utf-8")
    manifest = {
        "generator": "phy_bc_reason_demo", "complete": True, "seed": seed, "n_units": len(units),
        "duration_s": DURATION_S, "sample_rate": SAMPLE_RATE, "gain_uV_per_bit": GAIN_UV,
        "n_channels_dat": N_CHANNELS_DAT, "n_sync_channels": 1, "raw_file": BIN_NAME,
        "meta_file": META_NAME, "full_raw": not large,
        "units": [{"cluster_id": i, "design": u.design.name, "copy": u.copy,
                   "n_spikes": int(u.samples.size), "label": u.design.label,
                   "split_label": u.design.split_label, "fails": list(u.design.fails)}
                  for i, u in enumerate(units)],
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# Running bombcell
# ------------------------------------------------------------------------------------------------

def bombcell_params(split_non_somatic=False, **param_overrides):
    """The parameter changes run_bombcell makes to get_default_parameters' output (all JSON)."""
    params = {
        "splitGoodAndMua_NonSomatic": bool(split_non_somatic),
        # no figures: nothing to show in a subprocess, and the summary plots cost seconds
        "plotGlobal": False, "plotDetails": False, "savePlots": False,
        "verbose": True,  # its output is captured anyway, and shown if bombcell fails
        # always re-extract: a cached raw waveform file would silently survive a rebuild
        "reextractRaw": True,
        # Raw waveform extraction is bound by the GIL and by memmap reads: on 2 cores, 300 units
        # took 11 s in one job, 15 s in 2 threads and 17 s in joblib's 2-process pool (which also
        # cannot start on some setups: small /dev/shm, cluster schedulers).  So one job, and
        # threads should an override ask for more.
        "joblib_backend_preference": "threads",
        "joblib_n_jobs": 1,
    }
    params.update(param_overrides)
    return params


def _bombcell_worker(dataset_dir, overrides):
    """Run bombcell in this process (the child process of run_bombcell)."""
    import matplotlib
    matplotlib.use("Agg")  # never open a window, whatever MPLBACKEND says
    import bombcell as bc

    ks_dir = Path(dataset_dir).resolve()
    manifest_path = ks_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text("utf-8")) if manifest_path.exists() else {}
    raw = ks_dir / manifest.get("raw_file", BIN_NAME)
    meta = ks_dir / manifest.get("meta_file", META_NAME)
    param = bc.get_default_parameters(str(ks_dir), raw_file=str(raw), kilosort_version=4,
                                      meta_file=str(meta) if meta.exists() else None)
    if not meta.exists():  # no .meta: tell bombcell what it would have read from it
        param.update(nChannels=N_CHANNELS_DAT, nSyncChannels=1, gain_to_uV=GAIN_UV)
    for key, value in overrides.items():
        param[key] = np.asarray(value) if isinstance(value, list) else value
    save_path = ks_dir / BOMBCELL_DIRNAME
    bc.run_bombcell(str(ks_dir), str(save_path), param)
    return save_path


def run_bombcell(dataset_dir, split_non_somatic=False, quiet=True, **param_overrides):
    """Run real bombcell on a demo dataset; return the results folder, dataset_dir/bombcell.

    bombcell runs in a child process with its default Kilosort 4 parameters (gain and channel
    counts from the SpikeGLX .meta), changed only as ``bombcell_params`` says (no plots,
    thread-based raw waveform extraction) and by `param_overrides` (JSON values; lists become
    numpy arrays).  With `quiet`, its output is captured and shown only if it fails.
    Besides dataset_dir/bombcell, bombcell writes its cluster_*.tsv files into dataset_dir.
    """
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "params.py").exists():
        raise FileNotFoundError(f"{dataset_dir} holds no params.py: not a Kilosort/phy dataset")
    params = bombcell_params(split_non_somatic, **param_overrides)
    here = str(Path(__file__).resolve().parent)
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONIOENCODING="utf-8",
               PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "phy_bc_reason_demo", "--run-bombcell",
           str(dataset_dir.resolve()), "--params-json", json.dumps(params)]
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=quiet, text=True, encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        output = ((proc.stdout or "") + (proc.stderr or ""))[-20000:] if quiet else ""
        raise RuntimeError(f"bombcell failed on {dataset_dir} (exit code {proc.returncode})"
                           + (f":\n{output}" if output else ""))
    return dataset_dir / BOMBCELL_DIRNAME


# ------------------------------------------------------------------------------------------------
# The demo command
# ------------------------------------------------------------------------------------------------

def label_counts(dataset_dir):
    """{label: number of units} of bombcell's results (the empty label shown as '(no spikes)')."""
    import pandas as pd
    metrics = pd.read_parquet(Path(dataset_dir) / BOMBCELL_DIRNAME / "templates._bc_qMetrics.parquet",
                              columns=["bc_unitType"])
    counts = metrics["bc_unitType"].fillna("").value_counts()
    return {(k if k else "(no spikes)"): int(v) for k, v in sorted(counts.items())}


def _has_display():
    return (sys.platform in ("darwin", "win32")
            or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")))


def open_phy(dataset_dir):
    """Open phy's Template GUI on the dataset, with the reason plugin attached if available."""
    from phy.apps.template import template_gui
    from phy.utils.config import load_master_config

    name = phy_bc_reason_plugin.BombcellReasonPlugin.__name__  # defines and registers it
    configured = load_master_config().get("TemplateGUI", {}).get("plugins", [])
    plugins = [] if name in configured else [name]  # phy attaches configured plugins itself
    template_gui(str(Path(dataset_dir) / "params.py"), plugins=plugins)


def build_parser(prog="python -m phy_bc_reason_demo"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Build a small synthetic Kilosort 4 dataset, run bombcell on it, export the "
                    "reasons for its labels and open phy (or print them).",
        epilog=f"example:\n  {prog} demo-data --no-gui\n  {prog} demo-data --keep   "
               f"(open phy again on the dataset built before)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", default="demo-data", help="dataset folder (default: %(default)s)")
    p.add_argument("--split", action="store_true",
                   help="run bombcell with splitGoodAndMua_NonSomatic (NON-SOMA GOOD / NON-SOMA MUA)")
    p.add_argument("--no-gui", action="store_true", help="print the reasons instead of opening phy")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--units", type=int, default=None,
                   help="number of templates, repeating the designs (default: one of each)")
    p.add_argument("--keep", action="store_true",
                   help="reuse the dataset and bombcell results already in DIR")
    # internal: what run_bombcell's child process runs
    p.add_argument("--run-bombcell", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--params-json", default="{}", help=argparse.SUPPRESS)
    return p


def _command(*args):
    """A shell command that works as printed: this interpreter, quoted paths."""
    import shlex
    return " ".join(shlex.quote(str(a)) for a in args)


def main(argv=None, prog="python -m phy_bc_reason_demo"):
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.dir.startswith("-"):  # e.g. `demo -- --help`: never build a dataset in ./--help
        parser.error(f"dataset folder {args.dir!r} starts with '-'; write ./{args.dir} if you mean it")
    dataset = Path(args.dir)
    if args.run_bombcell:
        _bombcell_worker(dataset, json.loads(args.params_json))
        return 0

    if not (args.keep and (dataset / BOMBCELL_DIRNAME / "templates._bc_qMetrics.parquet").exists()):
        t0 = time.perf_counter()
        print(f"Building the demo dataset in {dataset} ...", flush=True)
        make_dataset(dataset, seed=args.seed, n_units=args.units)
        t1 = time.perf_counter()
        print(f"  built in {t1 - t0:.1f} s; running bombcell"
              f"{' (split non-somatic)' if args.split else ''} ...", flush=True)
        run_bombcell(dataset, split_non_somatic=args.split)
        print(f"  bombcell done in {time.perf_counter() - t1:.1f} s", flush=True)
    counts = label_counts(dataset)
    print("bombcell labels: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)

    rc = phy_bc_reason_plugin.main(["export", str(dataset)]) or 0
    if _has_display() and not args.no_gui:
        open_phy(dataset)
    else:
        rc = phy_bc_reason_plugin.main(["explain", str(dataset)]) or rc
        print(f"\nTo browse it in phy (on a machine with a display):\n  "
              f"{_command(sys.executable, '-m', 'phy_bc_reason_demo', dataset, '--keep')}",
              flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
