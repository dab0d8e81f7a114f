"""Every flag that the console scripts accepted before the shared-layers redesign still works.

The lists were taken from the parsers at d217b1e. New flags may be added; none may go. Each
flag is also parsed with a value of its kind, so a flag that is listed but broken fails too.
"""

import importlib

import pytest

COMMAND_FLAGS = {
    "pipeline.make_dataset": ("""
        --blur_model --body_hu_threshold --collection --collections --compression --config --help
        --idc_bucket_root --idc_index --input --kernels_per_slice --min_body_fraction
        --motion_anxiety_max --motion_anxiety_min --motion_centripetal_max --motion_exposures
        --motion_gaussian_shake_max --motion_jump_probability_max --motion_length_px_max
        --motion_length_px_min --motion_psf_max_size --motion_samples --no-noise_clean_target
        --no-noise_match_archive --no-raw_patient_ids --no-registration_affine --no-tcia_verify_md5
        --noise_clean_target --noise_ct_hu --noise_free_below_hu --noise_match_archive
        --noise_nps_peak_cycles_per_mm --noise_poisson_counts_per_hu --noise_sigma_hu --output
        --overwrite --pairs_manifest --pairs_per_shard --patient_salt --phantom_dir
        --phantom_patients --phantom_size --phantom_slices --preset
        --projection_breathing_amplitude_mm_max --projection_breathing_amplitude_mm_min
        --projection_breathing_cycles_max --projection_breathing_cycles_min
        --projection_breathing_tilt_deg_max --projection_fbp_filter --projection_geometry
        --projection_jerk_duration_max --projection_jerk_time_max --projection_jerk_time_min
        --projection_motion_types --projection_rotation_deg_max --projection_scan_deg
        --projection_translation_mm_max --projection_translation_mm_min --projection_views
        --raw_patient_ids --registered_collection --registration_affine
        --registration_affine_iterations --registration_body_hu_threshold --registration_clamp_hu
        --registration_iterations --registration_learning_rate --registration_metric_bins
        --registration_metric_sampling_fraction --registration_min_body_overlap
        --registration_min_ncc --registration_min_slice_coverage --registration_min_step
        --registration_sampling_seed --registration_shrink_factors
        --registration_smoothing_sigmas_mm --registration_threads --seed
        --series_filter_description_exclude --series_filter_description_include
        --series_filter_max_series_per_patient --series_filter_min_slices --source --subdatasets
        --target_pairs --tcia_backoff_initial_s --tcia_backoff_max_s --tcia_base_url
        --tcia_cache_dir --tcia_max_attempts --tcia_max_download_s --tcia_max_files
        --tcia_max_parallel_downloads --tcia_max_uncompressed_bytes --tcia_max_zip_bytes
        --tcia_timeout_s --tcia_verify_md5 --tcia_work_dir --test_pairs --validation_pairs --verbose
        -h
    """.split(), []),
    "pipeline.stats.cli": ("""
        --config --display_window_hu --examples --help --html --hu_histogram_bin_hu
        --hu_histogram_range_hu --hu_percentiles --image_stride --json --max_decode_errors_per_shard
        --parallel_calls --preset --ssim_filter_size --ssim_k1 --ssim_k2 --ssim_sigma --verbose
        --window_hu -h
    """.split(), ['dataset']),
    "model.train": ("""
        --adam_beta_1 --adam_beta_2 --adversarial_gradient_share --adversarial_weight
        --batch_per_replica --charbonnier_epsilon_hu --checkpoint_every --checkpoints_to_keep
        --config --critic --critic_blocks --critic_filters --critic_learning_rate --critic_norm
        --critic_steps --crop_candidates --crop_size --data --epochs --export --export_weights
        --generator --generator_blocks --generator_dropout --generator_filters
        --generator_learning_rate --generator_norm --generator_warmup_steps --gp_weight --help
        --hu_window --jit_compile --l1_weight --learning_rate_final_fraction
        --learning_rate_schedule --learning_rate_warmup_steps --logdir --max_steps_per_epoch
        --mixed_precision --model --no-jit_compile --no-mixed_precision --perceptual_distance
        --perceptual_gradient_share --perceptual_layer --perceptual_weight --perceptual_weights
        --perceptual_window_hu --pixel_weight --preset --residual_output --residual_scale --seed
        --shuffle_buffer --strategy --subdatasets --summary_every --time_budget_minutes --unet_depth
        --validation_crop --validation_every --validation_pairs --validation_window_hu --verbose -h
    """.split(), []),
    "model.evaluate": ("""
        --baselines --batch_size --body_component_fraction --body_threshold_hu --bootstrap_resamples
        --bootstrap_seed --config --data --figure_difference_hu --figure_pairs --full_range_hu
        --help --json --max_pairs --model --no_baselines --precision --preset --report --rl_iterations
        --tune_pairs --validation --verbose --wiener_nsr --window_hu -h
    """.split(), []),
    "model.deblur": ("""
        --batch_size --config --format --help --missing_rescale --model --no-progress --overwrite
        --png_window_hu --precision --progress --series_description_suffix --series_number_offset --series_uid
        --threads --verbose -h
    """.split(), ['input', 'output']),
    "pipeline.phantom_cli": ("""
        --help --patients --seed --size --slices --verbose
    """.split(), ['output']),}
"""Module of each console script -> (its flags, its positional arguments)."""

REQUIRED = {"model.train": ["--data", "d", "--logdir", "l"], "model.evaluate": ["--model", "m", "--data", "d"],
            "pipeline.make_dataset": ["--output", "o"],
            "pipeline.stats.cli": ["d"], "model.deblur": ["i", "o", "--model", "m"], "pipeline.phantom_cli": ["o"]}
"""Arguments each command needs besides the one flag under test."""


def sample_argv(action) -> list[str]:
    """A flag of `action` with a value of its kind (first choice, 1 for numbers, a word else)."""
    if action.nargs == 0:
        return []
    if action.choices:
        value = str(sorted(action.choices)[0])
    elif action.type in (int, float):
        value = "1"
    else:
        value = "x"
    count = action.nargs if isinstance(action.nargs, int) else 1
    return [value] * count


@pytest.mark.parametrize("module", sorted(COMMAND_FLAGS))
def test_every_flag_of_before_is_still_accepted(module):
    parser = importlib.import_module(module).build_parser()
    flags, positionals = COMMAND_FLAGS[module]
    actions = {flag: action for action in parser._actions for flag in action.option_strings}
    assert sorted(set(flags) - set(actions)) == []
    assert [a.dest for a in parser._actions if not a.option_strings] == positionals
    for flag in flags:
        if flag in ("-h", "--help"):
            continue
        action = actions[flag]
        args, rest = parser.parse_known_args(REQUIRED.get(module, []) + [flag, *sample_argv(action)])
        assert rest == [], (flag, rest)
        assert getattr(args, action.dest) is not None or action.default is None and action.nargs == 0, flag


def test_geometry_is_the_respiratory_models_short_flag(tmp_path):
    from pipeline.config import config_from_args

    parser = importlib.import_module("pipeline.make_dataset").build_parser()
    for flag in ("--geometry", "--respiratory_geometry"):
        args = parser.parse_args(["--output", "o", "--blur_model", "respiratory", flag, "cone"])
        config = config_from_args(args)
        assert (config.blur_model, config.respiratory.geometry, config.projection.geometry) == ("respiratory", "cone", "parallel")
    yaml_file = tmp_path / "resp.yaml"
    yaml_file.write_text("blur_model: respiratory\nrespiratory:\n  geometry: cone\n  cone_arc_deg: 200\n")
    config = config_from_args(parser.parse_args(["--output", "o", "--config", str(yaml_file)]))
    assert (config.respiratory.geometry, config.respiratory.cone_arc_deg) == ("cone", 200.0)
    assert config_from_args(parser.parse_args(["--output", "o", "--config", str(yaml_file), "--geometry", "fan"])) \
        .respiratory.geometry == "fan"
    with pytest.raises(SystemExit):
        parser.parse_args(["--output", "o", "--geometry", "parallel"])
