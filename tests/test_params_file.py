"""params.yaml validation: the schema's defaults are the shipped file's, and every malformed file in
tests/params/malformed/ gives its own error (file: field: expected, got), exit code 2 and no file
written, from the stage commands and from the flow, before any work."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from erasure.config import PipelineParams, load_params
from erasure.pipeline import entry

ROOT = Path(__file__).resolve().parent.parent
MALFORMED = Path(__file__).resolve().parent / "params" / "malformed"
KINDS = "style, object, instance, attribute, nudity, memorized, implicit"
SECTIONS = "model, seed, device, dtype, paths, anchors, generate, erase, evaluate, attack, release, tracking, schedule"
NO_BOUND = "a gate without a bound passes anything; expected at least one of target_max, reduction_min, " \
           "neighbour_max_drop"
GATED = "expected a gate for every kind, or a 'default'"
R = "erase.recipes."

# file -> what its error must say; a tuple: every line it must hold (one line per problem).
EXPECTED = {
    "empty.yaml": f"empty; expected a mapping of sections ({SECTIONS})",
    "comments-only.yaml": "empty; expected a mapping of sections",
    "not-a-mapping.yaml": f"expected a mapping of sections ({SECTIONS}), got [{{'model': 'miniworld'}}, {{'seed': 0}}]",
    "scalar.yaml": f"expected a mapping of sections ({SECTIONS}), got 'miniworld'",
    "bad-yaml.yaml": "not valid YAML: line 3, column 5",
    "not-utf8.yaml": "not UTF-8 text (byte 24)",
    "unknown-section.yaml": f"relase: unknown section 'relase'; expected one of {SECTIONS} (did you mean 'release'?)",
    "invisible-section-name.yaml": "(did you mean 'release'?) (it holds an invisible character: U+200B ZERO WIDTH "
                                   "SPACE at position 3)",
    "duplicate-section.yaml": "line 4: key 'release' given twice in one mapping (first at line 1)",
    "duplicate-recipe-key.yaml": "line 3: key 'steps' given twice in one mapping",
    "duplicate-recipe.yaml": "line 4: key 'esd/style' given twice in one mapping (first at line 3)",
    "anchor-alias.yaml": "line 3: anchor '&esd': anchors and aliases are not accepted",
    "merge-key.yaml": "line 4: merge key '<<' is not accepted",
    "bomb.yaml": "line 5: anchor '&a': anchors and aliases are not accepted",
    "recipe-kind-typo.yaml": f"{R}esd/styel: unknown kind 'styel'; expected one of {KINDS} (did you mean 'style'?)",
    "recipe-unknown-method.yaml": f"{R}sd/style: unknown method 'sd'; expected one of esd, ca, abo, loss-max, "
                                  "uce (did you mean 'esd'?)",
    "recipe-key-without-slash.yaml": f"{R}esd-style: expected a key '<method>/<kind>' (e.g. 'esd/style')",
    "recipe-not-a-mapping.yaml": f"{R}esd/style: expected a mapping of rule, steps, lr, batch_size, weight_decay, "
                                 "pool_size, options, got 300",
    "recipe-unknown-field.yaml": f"{R}esd/style.stpes: unknown field 'stpes'; expected one of rule, steps, lr, "
                                 "batch_size, weight_decay, pool_size, options (did you mean 'steps'?)",
    "recipe-run-level-field.yaml": f"{R}esd/style.mode: unknown field 'mode'; expected one of rule, steps",
    "recipe-option-misspelt.yaml": f"{R}esd/style.options.eat: unknown option 'eat'; expected one of "
                                   "preserve_prompts, preserve_share, preserve_from, preserve_fragile, "
                                   "preserve_neighbours, eta, sampler",
    "recipe-option-other-method.yaml": f"{R}ca/instance.options.eta: unknown option 'eta'; expected one of "
                                       "preserve_prompts, preserve_share, preserve_from, preserve_fragile, "
                                       "preserve_neighbours, loss",
    "recipe-option-out-of-range.yaml": f"{R}esd/implicit.options.eta: Input should be greater than 0, got 0",
    "recipe-option-share-1.yaml": f"{R}esd/style.options.preserve_share: Input should be less than 1, got 1.0",
    "recipe-option-wrong-type.yaml": f"{R}esd/style.options.ddim_steps: Input should be a valid integer, got 'many'",
    "recipe-option-bool-count.yaml": f"{R}ca/instance.options.anchor_images: Input should be a valid integer, "
                                     "got True",
    "recipe-option-unknown-choice.yaml": f"{R}esd/style.options.preserve_from: Input should be 'base' or 'current', "
                                         "got 'later'",
    "recipe-options-not-a-mapping.yaml": f"{R}esd/style.options: expected a mapping of the method's options, "
                                         "got ['eta', 4.0]",
    "recipe-rule-unknown.yaml": f"{R}esd/style.rule: unknown rule 'xatn'; expected one of xattn-kv, xattn, attn, "
                                "noxattn, noxattn-linear, full, embedding (did you mean 'xattn'?)",
    "recipe-steps-zero.yaml": f"{R}esd/style.steps: Input should be greater than 0, got 0",
    "recipe-closed-form-steps.yaml": (f"{R}uce/style.lr: method 'uce' is closed-form (no training steps): lr does "
                                      "not apply to it; expected only 'rule' and 'options'",
                                      f"{R}uce/style.steps: method 'uce' is closed-form"),
    "recipe-closed-form-rule.yaml": f"{R}uce/style.rule: method 'uce' edits the cross-attention key/value "
                                    "projections; expected 'xattn-kv', got 'full'",
    "quality-drift-negative.yaml": "release.quality.drift_max: Input should be greater than or equal to 0, got -3",
    "quality-unknown-bound.yaml": "release.quality.fid_max: unknown field 'fid_max'; expected one of fid_max_ratio, "
                                  "fid_to_base_max, drift_max (did you mean 'fid_max_ratio'?)",
    "recipe-steps-fraction.yaml": f"{R}esd/style.steps: Input should be a valid integer, got 2.5",
    "recipe-lr-negative.yaml": f"{R}esd/style.lr: Input should be greater than 0, got -0.0002",
    "recipe-lr-without-dot.yaml": f"{R}esd/style.lr: Input should be a valid number (write 1.0e-4, not 1e-4), "
                                  "got '2e-4'",
    "recipe-lr-nan.yaml": f"{R}esd/style.lr: expected a finite number, got nan",
    "recipe-batch-size-zero.yaml": f"{R}ca/object.batch_size: Input should be greater than 0, got 0",
    "recipe-weight-decay-negative.yaml": f"{R}ca/object.weight_decay: Input should be greater than or equal to 0, "
                                         "got -0.01",
    "recipes-not-a-mapping.yaml": "erase.recipes: expected a mapping, got ['esd/style', 'ca/instance']",
    "gate-target-max-2.yaml": "release.gates.default.target_max: Input should be less than or equal to 1, got 2.0",
    "gate-neighbour-drop-negative.yaml": "release.gates.default.neighbour_max_drop: Input should be greater than or "
                                         "equal to 0, got -1",
    "gate-reduction-min-1.5.yaml": "release.gates.implicit.reduction_min: Input should be less than or equal to 1, "
                                   "got 1.5",
    "gate-without-bound.yaml": f"release.gates.memorized: {NO_BOUND}",
    "gate-null.yaml": "release.gates.default: expected a mapping, got None",
    "gate-bound-quoted.yaml": "release.gates.default.target_max: Input should be a valid number (write it without "
                              "quotes), got '0.10'",
    "gate-bound-bool.yaml": "release.gates.default.target_max: Input should be a valid number, got True",
    "gate-unknown-bound.yaml": "release.gates.default.target_min: unknown field 'target_min'; expected one of "
                               "target_max, reduction_min, neighbour_max_drop, attack_max (did you mean 'target_max'?)",
    "gates-empty.yaml": f"release.gates: no gate for kind(s) {KINDS}; {GATED}",
    "gates-missing-kinds.yaml": f"release.gates: no gate for kind(s) object, attribute, nudity, memorized, implicit; {GATED}",
    "gates-unknown-kind.yaml": "release.gates.styel: unknown kind 'styel'; expected one of default, style",
    "release-null.yaml": "release: expected a mapping, got None",
    "registry-name-empty.yaml": "release.registry_name: expected a non-empty text, got ''",
    "registry-name-slash.yaml": "release.registry_name: expected an MLflow model name (no '/' or ':', not a relative "
                                "path), got 'team/miniworld'",
    "alias-reserved.yaml": "release.alias: expected an MLflow alias (letters, digits, '_' and '-'; not 'latest' or "
                           "v<number>), got 'latest'",
    "alias-space.yaml": "release.alias: expected an MLflow alias (letters, digits, '_' and '-'; not 'latest' or "
                        "v<number>), got 'my alias'",
    "methods-unknown-kind.yaml": f"erase.methods.styel: unknown kind 'styel'; expected one of {KINDS}",
    "methods-unknown-method.yaml": "erase.methods.style: unknown method 'sd'; expected one of esd, ca, abo, loss-max",
    "mode-unknown.yaml": "erase.mode: Input should be 'joint', 'sequential' or 'consolidated', got 'parallel'",
    "zero-stage-5.yaml": "erase.zero_stage: Input should be less than or equal to 3, got 5",
    "zero-stage-bool.yaml": "erase.zero_stage: Input should be a valid integer, got True",
    "mixed-precision-fp16.yaml": "erase.mixed_precision: Input should be 'no' or 'bf16', got 'fp16'",
    "mixed-precision-unquoted-no.yaml": "erase.mixed_precision: Input should be 'no' or 'bf16' (YAML reads no, yes, "
                                        "on, off unquoted as booleans: quote it), got False",
    "gradient-checkpointing-text.yaml": "erase.gradient_checkpointing: Input should be a valid boolean, got 'yes'",
    "checkpoint-every-zero.yaml": "erase.checkpoint_every: Input should be greater than 0, got 0",
    "images-per-probe-zero.yaml": "generate.images_per_probe: Input should be greater than 0, got 0",
    "generic-images-bool.yaml": "generate.generic_images: Input should be a valid integer, got True",
    "guidance-negative.yaml": "generate.guidance: Input should be greater than or equal to 0, got -1",
    "guidance-infinite.yaml": "generate.guidance: Input should be a finite number, got inf",
    "generate-steps-zero.yaml": "generate.steps: Input should be greater than 0, got 0",
    "misspellings-negative.yaml": "generate.misspellings: Input should be greater than or equal to 0, got -1",
    "generate-unknown-field.yaml": "generate.image_per_probe: unknown field 'image_per_probe'; expected one of "
                                   "images_per_probe, generic_images",
    "anchors-similarity-unknown.yaml": "anchors.similarity: Input should be 'guidance' or 'text', got 'clip'",
    "anchors-candidates-unknown-kind.yaml": f"anchors.candidates.objects: unknown kind 'objects'; expected one of "
                                            f"{KINDS} (did you mean 'object'?)",
    "anchors-candidates-not-a-list.yaml": "anchors.candidates.object: expected a list, got 'circle'",
    "anchors-none-for-unknown-method.yaml": "anchors.none_for_methods[1]: unknown method 'los-max'; expected one of "
                                            "esd, ca, abo, loss-max, uce (did you mean 'loss-max'?)",
    "evaluate-judge-unknown.yaml": "evaluate.judges.default: Input should be 'auto', 'miniworld', 'clip', "
                                   "'nudenet' or 'copy', got 'clipp'",
    "evaluate-judge-wrong-kind.yaml": "evaluate.judges.style: the 'nudenet' judge reads only nudity concepts; "
                                      "expected clip or auto for style",
    "evaluate-miniworld-judge-other-model.yaml": "evaluate.judges.default: 'miniworld' reads only the miniworld "
                                                 "model's images, and model is '/models/sd15'",
    "evaluate-nudenet-bad.yaml": ("evaluate.nudenet.classes[0]: unknown NudeNet class 'BREAST_EXPOSED'",
                                  "evaluate.nudenet.threshold: Input should be greater than 0, got 0"),
    "evaluate-copy-threshold.yaml": "evaluate.copy.threshold: Input should be less than or equal to 1, got 2",
    "cron-invalid.yaml": "schedule.cron: expected a cron expression (minute hour day month weekday, e.g. "
                         "'0 2 * * *'): Bad minute, got '61 2 * * *'",
    "cron-four-fields.yaml": "schedule.cron: expected a cron expression (minute hour day month weekday, e.g. "
                             "'0 2 * * *'): Wrong number of fields, got '0 2 * *'",
    "timezone-unknown.yaml": "schedule.timezone: expected an IANA time zone (e.g. 'UTC', 'Europe/Paris') (did you "
                             "mean 'Europe/Paris'?), got 'Europe/Pari'",
    "tracking-uri-empty.yaml": "tracking.uri: expected a non-empty text, got ''",
    "tracking-experiment-blank.yaml": "tracking.experiment: expected a non-empty text, got '   '",
    "paths-blocklist-empty.yaml": "paths.blocklist: expected a non-empty path, got ''",
    "paths-not-a-mapping.yaml": "paths: expected a mapping, got 'work'",
    "model-empty.yaml": "model: expected a non-empty text, got ''",
    "seed-not-an-int.yaml": "seed: Input should be a valid integer, got 1.5",
    "seed-quoted.yaml": "seed: Input should be a valid integer (write it without quotes), got '0'",
    "seed-negative.yaml": "seed: Input should be greater than or equal to 0, got -1",
    "seed-huge.yaml": "seed: Input should be less than or equal to 4294967295, got 99999999999999999999",
    "paths-work-a-number.yaml": "paths.work: expected a path (text), got 5",
    "several-problems.yaml": ("seed: Input should be a valid integer, got 'x'",
                              "generate.steps: Input should be greater than 0, got 0",
                              "release.gates.default.target_max: Input should be less than or equal to 1, got 2.0",
                              "schedule.timezone: expected an IANA time zone (e.g. 'UTC', 'Europe/Paris'), "
                              "got 'Mars/Olympus'"),
}


def _expected(name: str) -> tuple[str, ...]:
    e = EXPECTED[name]
    return e if isinstance(e, tuple) else (e,)


def _check(name: str, rc: int, stderr: str, folder: Path) -> None:
    """Exit 2, one `error: <file>: ...` line per expected problem, no traceback, nothing written."""
    assert rc == 2, stderr
    lines = stderr.splitlines()
    assert all(line.startswith(f"error: {name}: ") for line in lines), stderr
    assert len(lines) == len(_expected(name)), stderr
    for fragment in _expected(name):
        assert fragment in stderr
    assert "Traceback" not in stderr
    assert [p.name for p in folder.iterdir()] == [name]  # no work/, releases/, .cache/, mlflow.db


def test_every_malformed_file_is_in_the_table():
    assert {p.name for p in MALFORMED.iterdir()} == set(EXPECTED) and len(EXPECTED) >= 42


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_params_exit_2_with_their_error_and_write_nothing(name, tmp_path, monkeypatch, capsys):
    shutil.copy(MALFORMED / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    rc = entry.main("ingest", ["--params", name])
    out = capsys.readouterr()
    assert out.out == ""
    _check(name, rc, out.err, tmp_path)


# The stage command itself for a few files (ones that need no method import: about a second each).
@pytest.mark.parametrize("name", ["duplicate-section.yaml", "empty.yaml", "several-problems.yaml"])
def test_the_stage_command_exits_2_before_any_work(name, tmp_path):
    shutil.copy(MALFORMED / name, tmp_path / name)
    res = subprocess.run([sys.executable, str(ROOT / "stages" / "ingest.py"), "--params", name],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.stdout == ""
    _check(name, res.returncode, res.stderr, tmp_path)


def test_the_flow_exits_2_in_seconds_without_starting_a_server(tmp_path):
    """`python flows/release_flow.py --params bad.yaml` used to start Prefect's server and print two
    tracebacks after two minutes; Prefect's home stays empty (no database, so no server)."""
    name = "gates-missing-kinds.yaml"
    shutil.copy(MALFORMED / name, tmp_path / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(ROOT / "flows" / "release_flow.py"), "--params", name],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert time.monotonic() - t0 < 45, "the flow took too long to refuse its params"
    assert "Starting temporary server" not in res.stderr + res.stdout
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()
    if (tmp_path / "prefect-home").exists():  # Prefect may make its folder on import; nothing else
        shutil.rmtree(tmp_path / "prefect-home")
    _check(name, res.returncode, res.stderr, tmp_path)


def test_the_flows_check_the_params_and_the_blocklist_before_starting(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "flows"))
    try:
        from release_flow import checked_params
    finally:
        sys.path.remove(str(ROOT / "flows"))
    with pytest.raises(SystemExit) as exc:
        checked_params(str(tmp_path / "nosuch.yaml"))
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nosuch.yaml'}: no such params file\n"
    (tmp_path / "p.yaml").write_text("paths: {blocklist: missing.yaml}\n")
    with pytest.raises(SystemExit) as exc:
        checked_params(str(tmp_path / "p.yaml"))
    assert exc.value.code == 2
    params = tmp_path / "p.yaml"
    assert capsys.readouterr().err == f"error: {params}: paths.blocklist: no such file {tmp_path / 'missing.yaml'}\n"
    params.write_text(f"model: {tmp_path / 'no-model'}\npaths: {{blocklist: {ROOT / 'blocklists' / 'default.yaml'}}}\n"
                      "release: {quality: {fid_max_ratio: null}}\n")  # no true renders off the miniworld
    with pytest.raises(SystemExit) as exc:
        checked_params(str(params))
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {params}: model: --model '{tmp_path / 'no-model'}': no such")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]
    # The blocklist read whole, and the erasure's plan made, before the flow starts: nothing written.
    (tmp_path / "b.yaml").write_text("concepts:\n  - {concept: Pip, kind: instance, kind: style}\n")
    params.write_text(f"paths: {{blocklist: b.yaml, work: {tmp_path / 'work'}, cache: {tmp_path / 'cache'}}}\n")
    with pytest.raises(SystemExit) as exc:
        checked_params(str(params))
    assert exc.value.code == 2
    assert capsys.readouterr().err == (f"error: ingest: {tmp_path / 'b.yaml'}: line 2: key 'kind' given twice in one "
                                       "mapping (first at line 2); each key may appear once\n")
    (tmp_path / "b.yaml").write_text("concepts:\n  - {concept: with a golden frame, kind: implicit, method: uce}\n")
    with pytest.raises(SystemExit) as exc:
        checked_params(str(params))
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("error: anchors: concept 'with a golden frame' (implicit): UCE remaps what "
                                       "prompts naming a concept read; an attribute that appears unnamed needs a "
                                       "trained method (esd, ca)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.yaml", "p.yaml"]


def test_defaults_are_the_shipped_params():
    """A file that leaves a section out runs as the shipped params.yaml does (its gates, its recipes)."""
    shipped = load_params(ROOT / "params.yaml")
    defaults = PipelineParams()
    assert defaults.model_dump(exclude={"paths"}) == shipped.model_dump(exclude={"paths"})
    assert {k: v for k, v in defaults.paths.model_dump().items()} == \
        {k: Path(v).relative_to(ROOT) for k, v in shipped.paths.model_dump().items()}


def test_a_file_without_a_release_section_keeps_the_shipped_gates(tmp_path):
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    del shipped["release"], shipped["erase"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(shipped))
    params = load_params(tmp_path / "p.yaml")
    assert params.release == load_params(ROOT / "params.yaml").release
    assert params.gate_for("style").target_max == 0.10 and params.gate_for("memorized").target_max == 0.05
    assert params.erase.recipes["esd/style"]["steps"] == 300  # not ESD's reference 1,000


def test_recipes_are_kept_as_written():
    """The erase stage keys its work folders by the recipes: validation must not rewrite them."""
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert load_params(ROOT / "params.yaml").erase.recipes == shipped["erase"]["recipes"]


def test_every_cron_the_schema_accepts_is_one_prefect_serves():
    from prefect._internal.schemas.validators import validate_cron_string
    from pydantic import ValidationError

    from erasure.config import ScheduleParams

    for cron in ["0 2 * * *", "*/5 * * * *", "0 8 * * 1-5", "0 0 1 */2 *", "0 0 * * MON-FRI", "30 4 1,15 * *",
                 "0 0 L * *", "0 0 * * 1#2", "0 0 * * 7", "0 2 * * * *", "0 0 * * 5L", "@daily", "0 2 30 2 *",
                 "H * * * *", "61 * * * *", "* * * * ?"]:
        try:
            ScheduleParams(cron=cron)
        except ValidationError:
            continue
        # cronsim read it; Prefect must too (flows/deploy.py also asks Prefect before serving).
        if cron == "0 0 * * 5L":  # the one known disagreement: deploy.py refuses it with Prefect's error
            with pytest.raises(ValueError):
                validate_cron_string(cron)
            continue
        assert validate_cron_string(cron) == cron


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    from erasure.config import ParamsError

    with pytest.raises(ParamsError) as exc:
        load_params(MALFORMED / "several-problems.yaml")
    assert len(exc.value.lines) == 4 and str(exc.value) == "\n".join(exc.value.lines)


@pytest.mark.parametrize("text, argv, message", [
    ("schedule: {timezone: Mars/Olympus}\n", [], "p.yaml: schedule.timezone: expected an IANA time zone"),
    ("schedule: {cron: '0 2 * *'}\n", [], "p.yaml: schedule.cron: expected a cron expression"),
    # cronsim reads "5L"; Prefect does not: deploy asks Prefect too, before serving.
    ("schedule: {cron: '0 0 * * 5L'}\n", [], "p.yaml: schedule.cron: Invalid cron string: \"0 0 * * 5L\""),
    ("{}\n", ["--cron", "every night"], "--cron: Invalid cron string: \"every night\""),
])
def test_deploy_refuses_a_bad_schedule_before_serving(text, argv, message, tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_under_test", ROOT / "flows" / "deploy.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    monkeypatch.setattr(deploy.release_flow, "serve", lambda *a, **k: pytest.fail("served a bad schedule"))
    (tmp_path / "p.yaml").write_text(text)
    shutil.copytree(ROOT / "blocklists", tmp_path / "blocklists")  # the default path, with its reference images
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["deploy.py", "--params", "p.yaml", *argv])
    with pytest.raises(SystemExit) as exc:
        deploy.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err


def test_the_registry_names_and_aliases_accepted_are_mlflows(tmp_path):
    """The schema mirrors MLflow's rules (importing mlflow to ask it takes seconds): they must agree."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import (_validate_model_alias_name, _validate_model_alias_name_reserved,
                                         _validate_model_name)
    from pydantic import ValidationError

    from erasure.config import ReleaseParams

    def mlflow_ok(check, *names):
        try:
            for c, n in zip(check, names):
                c(n)
        except MlflowException:
            return False
        return True

    for name in ["miniworld-erased", "team/model", "a:b", "../up", ".", "./x", "x/", "a b", ".hidden", "a..b", "ü"]:
        try:
            ReleaseParams(registry_name=name)
            ours = True
        except ValidationError:
            ours = False
        assert ours == mlflow_ok([_validate_model_name], name), name
    for alias in ["production", "prod_2", "my alias", "latest", "Latest", "v2", "V10", "v2a", "a" * 256, "é", "-"]:
        try:
            ReleaseParams(alias=alias)
            ours = True
        except ValidationError:
            ours = False
        assert ours == mlflow_ok([_validate_model_alias_name, _validate_model_alias_name_reserved], alias, alias), alias


def test_a_folder_or_an_unreadable_file_is_one_error(tmp_path):
    from erasure.config import ParamsError

    with pytest.raises(ParamsError, match="a folder; expected a params file"):
        load_params(tmp_path)
    path = tmp_path / "p.yaml"
    path.write_text("seed: 0\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who reads any file")
        with pytest.raises(ParamsError, match=r"p.yaml: cannot be read \(Permission denied\)"):
            load_params(path)
    finally:
        path.chmod(0o644)


def test_an_impossible_plan_fails_at_the_anchors_stage_before_any_image(tmp_path):
    """Joint mode over the shipped recipes (ESD at lr 2e-4, CA at 5e-4) used to fail only in the erase
    stage, after generation; the anchors stage makes the erase stage's plan and writes nothing."""
    from erasure.pipeline import anchors, ingest

    (tmp_path / "blocklist.yaml").write_text("concepts:\n  - {concept: Vasquez, kind: style, method: esd}\n"
                                             "  - {concept: Pip, kind: instance, anchor: circle, method: ca}\n")
    (tmp_path / "params.yaml").write_text("erase: {mode: joint}\npaths: {blocklist: blocklist.yaml}\n")
    params = load_params(tmp_path / "params.yaml")
    ingest.run(params)
    with pytest.raises(ValueError, match="joint mode trains every concept with one optimizer"):
        anchors.run(params)
    assert not params.paths.stage("anchors").exists()
    # Sequential, the same blocklist plans (and the anchors are written).
    params.erase.mode = "sequential"
    assert anchors.run(params) == {"Vasquez": None, "Pip": "circle"}


def test_the_clip_judges_params_file_differs_from_params_yaml_only_where_it_says():
    """params-clip.yaml (the main job read by the clip judge) must run what params.yaml runs."""
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    clip = yaml.safe_load((ROOT / "params-clip.yaml").read_text())
    own = {("paths", "work"): "work-clip", ("paths", "releases"): "releases-clip",
           ("evaluate", "judges"): {"default": "clip"}, ("evaluate", "clip"): {"model": "miniworld"},
           ("release", "registry_name"): "miniworld-erased-clip", ("tracking", "experiment"): "erasure-clip"}
    for (section, key), value in own.items():
        assert clip[section].pop(key) == value
        shipped[section].pop(key)
    assert clip == shipped
    load_params(ROOT / "params-clip.yaml")


def test_the_readmes_evaluate_example_is_a_valid_section(tmp_path):
    import re

    block = next(b for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                 if b.startswith("evaluate:"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(yaml.safe_load(block), model="some/sd-model")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    ev = load_params(path).evaluate
    assert str(ev.copy.sscd).endswith(".pt") and ev.i2p == tmp_path / "prompts" / "i2p-nudity.csv"
