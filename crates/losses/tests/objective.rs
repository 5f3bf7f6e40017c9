//! The objective as recipes describe it: DistilBERT's and TinyBERT's objectives written in TOML,
//! schedules, MT-DNN's ensemble, construction errors, and gradients through real encoders.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use kd_bert::{
    AttentionMaps, AttentionProjections, BertConfig, BertForSequenceClassification, BertInput,
    BertOutput, MaskedLmHead, Mode, Params,
};
use kd_losses::{
    ComponentConfig, DistillOutputs, EncoderShape, LayerMapping, LossBatch, LossKind, Objective,
    ObjectiveConfig, Schedule, cosine_loss, fsp_loss, hard_cross_entropy, mmd_loss, mse,
    relation_kl, soft_cross_entropy, soft_targets,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::BTreeMap;

const DISTILBERT: &str = r#"
temperature = 2.0
components = [
    { kind = "soft_ce", weight = 5.0 },
    { kind = "hard", weight = 2.0 },
    { kind = "cosine", name = "cos", weight = 1.0 },
]
"#;

/// TinyBERT's two stages: intermediate layers first, then the prediction layer.
const TINYBERT: &str = r#"
[intermediate]
components = [
    { kind = "embedding_mse" },
    { kind = "hidden_mse", layers = "uniform" },
    { kind = "attention_mse", layers = "uniform" },
]

[prediction]
temperature = 1.0
components = [{ kind = "soft_ce" }]
"#;

/// TextBrewer's Gram-matrix losses: FSP on its default layer pairs (weighted) and on two
/// named ones, and NST on the uniform mapping.
const GRAM_MATRICES: &str = r#"
components = [
    { kind = "fsp", weight = 2.0 },
    { kind = "fsp", name = "fsp_top", layers = { explicit = [[1, 2], [2, 4]] } },
    { kind = "mmd", layers = "uniform" },
]
"#;

/// MiniLM's value relation on the last layers, and MiniLMv2's attention relations on them
/// (weighted) and on an upper-middle teacher layer in four relation heads.
const RELATIONS: &str = r#"
components = [
    { kind = "value_relation" },
    { kind = "attention_relations", weight = 2.0 },
    { kind = "attention_relations", name = "upper_middle", layers = { explicit = [[2, 3]] }, relation_heads = 4 },
]
"#;

const DEVICE: Device = Device::Cpu;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    Tensor::from_vec(values, shape, &DEVICE).unwrap()
}

fn padding_mask(real_lengths: &[usize], seq: usize) -> Tensor {
    let values: Vec<u32> = real_lengths
        .iter()
        .flat_map(|&real| (0..seq).map(move |i| u32::from(i < real)))
        .collect();
    Tensor::from_vec(values, (real_lengths.len(), seq), &DEVICE).unwrap()
}

/// Encoder outputs of the given shape with seeded values, the attention projections among
/// them; padded keys' scores hold f32::MIN, as the encoder leaves them.
fn encoder_outputs(shape: EncoderShape, mask: &Tensor, seed: u64) -> BertOutput {
    let (batch, seq) = mask.dims2().unwrap();
    let states = |seed| random(&[batch, seq, shape.hidden_size], seed);
    let scores = |seed| {
        let dims = [batch, shape.heads, seq, seq];
        let keys = mask.unsqueeze(1).unwrap().unsqueeze(1).unwrap();
        let masked = Tensor::full(f32::MIN, &dims, &DEVICE).unwrap();
        let keys = keys.broadcast_as(&dims).unwrap();
        keys.where_cond(&random(&dims, seed), &masked).unwrap()
    };
    let projections = |seed| AttentionProjections {
        query: states(seed),
        key: states(seed + 1),
        value: states(seed + 2),
    };
    let layers = 1..=shape.layers as u64;
    BertOutput {
        embeddings: states(seed),
        hidden_states: layers.clone().map(|l| states(seed + 100 * l)).collect(),
        attention_scores: layers.clone().map(|l| scores(seed + 100 * l + 1)).collect(),
        attention_probs: Vec::new(),
        attention_projections: layers.map(|l| projections(seed + 100 * l + 2)).collect(),
        pooled: None,
    }
}

fn outputs<'a>(logits: &'a Tensor, encoder: &'a BertOutput) -> DistillOutputs<'a> {
    DistillOutputs {
        logits: Some(logits),
        encoder: Some(encoder),
    }
}

fn batch<'a>(attention_mask: &'a Tensor, labels: Option<&'a Tensor>) -> LossBatch<'a> {
    LossBatch {
        attention_mask,
        labels,
        label_mask: None,
    }
}

fn scalar(loss: &Tensor) -> f32 {
    loss.to_scalar().unwrap()
}

fn assert_close(actual: f32, expected: f32) {
    let tolerance = 1e-5 * expected.abs().max(1.0);
    assert!(
        (actual - expected).abs() <= tolerance,
        "got {actual}, expected {expected}"
    );
}

fn shape(layers: usize, hidden_size: usize, heads: usize) -> EncoderShape {
    EncoderShape {
        layers,
        hidden_size,
        heads,
    }
}

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    toml::from_str(&toml::to_string(value).unwrap()).unwrap()
}

#[test]
fn distilbert_recipe_parses_round_trips_and_weights_its_components() -> Result<()> {
    let config: ObjectiveConfig = toml::from_str(DISTILBERT)?;
    let component = |kind, name: Option<&str>, weight| ComponentConfig {
        kind,
        name: name.map(str::to_string),
        weight: Schedule::Constant(weight),
        layers: None,
        relation_heads: None,
    };
    let expected = ObjectiveConfig {
        temperature: Schedule::Constant(2.0),
        teacher_weights: None,
        components: vec![
            component(LossKind::SoftCe, None, 5.0),
            component(LossKind::Hard, None, 2.0),
            component(LossKind::Cosine, Some("cos"), 1.0),
        ],
    };
    assert_eq!(config, expected);
    assert_eq!(round_trip(&config), config);

    // A masked-LM student as DistilBERT trains it: half the depth, the teacher's width;
    // per-token logits, hard labels at the masked positions only.
    let (student_shape, teacher_shape) = (shape(2, 8, 2), shape(4, 8, 2));
    let objective = Objective::new(&config, &[teacher_shape], student_shape, &DEVICE, 0)?;
    assert!(objective.params().vars().is_empty());
    let mask = padding_mask(&[5, 3], 5);
    let (student, teacher) = (
        encoder_outputs(student_shape, &mask, 1),
        encoder_outputs(teacher_shape, &mask, 2),
    );
    let (student_logits, teacher_logits) = (random(&[2, 5, 11], 3), random(&[2, 5, 11], 4));
    let labels = Tensor::new(&[[3u32, 0, 7, 0, 0], [0, 10, 0, 0, 0]], &DEVICE)?;
    let masked_positions = Tensor::new(&[[1u32, 0, 1, 0, 0], [0, 1, 0, 0, 0]], &DEVICE)?;
    let breakdown = objective.compute(
        &outputs(&student_logits, &student),
        &[outputs(&teacher_logits, &teacher)],
        &LossBatch {
            attention_mask: &mask,
            labels: Some(&labels),
            label_mask: Some(&masked_positions),
        },
        0,
        100,
    )?;

    let soft_ce = soft_cross_entropy(
        &student_logits,
        &soft_targets(&teacher_logits, 2.0)?,
        2.0,
        Some(&mask),
    )?;
    let hard = hard_cross_entropy(&student_logits, &labels, Some(&masked_positions))?;
    let cos = cosine_loss(&student.hidden_states[1], &teacher.hidden_states[3], &mask)?;
    let expected = BTreeMap::from([
        ("cos".to_string(), scalar(&cos)),
        ("hard".to_string(), scalar(&hard)),
        ("soft_ce".to_string(), scalar(&soft_ce)),
    ]);
    assert_eq!(
        breakdown.components.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, value) in &expected {
        assert_close(breakdown.components[name], *value);
    }
    let weighted = 5.0 * expected["soft_ce"] + 2.0 * expected["hard"] + expected["cos"];
    assert_close(scalar(&breakdown.total), weighted);
    Ok(())
}

#[test]
fn tinybert_stages_parse_round_trip_and_project_the_student() -> Result<()> {
    let stages: BTreeMap<String, ObjectiveConfig> = toml::from_str(TINYBERT)?;
    assert_eq!(round_trip(&stages), stages);
    let intermediate = &stages["intermediate"];
    assert_eq!(
        intermediate.components[1].layers,
        Some(LayerMapping::Uniform)
    );

    // A 2-layer, 8-wide student of a 4-layer, 12-wide teacher: W_e and W_h, 12×8 each.
    let (student_shape, teacher_shape) = (shape(2, 8, 2), shape(4, 12, 2));
    let objective = Objective::new(intermediate, &[teacher_shape], student_shape, &DEVICE, 7)?;
    let names: Vec<String> = objective
        .params()
        .vars()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        [
            "embedding_mse.bias",
            "embedding_mse.weight",
            "hidden_mse.bias",
            "hidden_mse.weight"
        ]
    );
    let weight = objective.params().get("hidden_mse.weight").unwrap();
    assert_eq!(weight.dims(), [12, 8]);

    let mask = padding_mask(&[4, 2], 4);
    let (student, teacher) = (
        encoder_outputs(student_shape, &mask, 1),
        encoder_outputs(teacher_shape, &mask, 2),
    );
    let (student_logits, teacher_logits) = (random(&[2, 3], 3), random(&[2, 3], 4));
    let loss_batch = batch(&mask, None);
    let breakdown = objective.compute(
        &outputs(&student_logits, &student),
        &[outputs(&teacher_logits, &teacher)],
        &loss_batch,
        0,
        1,
    )?;
    // Uniform pairs for 2 and 4 layers: (1, 2) and (2, 4).
    let bias = objective.params().get("hidden_mse.bias").unwrap();
    let project = |states: &Tensor| {
        states
            .broadcast_matmul(&weight.t()?)?
            .broadcast_add(bias.as_tensor())
    };
    let hidden = scalar(&mse(
        &project(&student.hidden_states[0])?,
        &teacher.hidden_states[1],
        Some(&mask),
    )?) + scalar(&mse(
        &project(&student.hidden_states[1])?,
        &teacher.hidden_states[3],
        Some(&mask),
    )?);
    assert_close(breakdown.components["hidden_mse"], hidden);
    let total: f32 = breakdown.components.values().sum();
    assert_close(scalar(&breakdown.total), total);

    // The same objective between two identical models is zero.
    let objective = Objective::new(intermediate, &[teacher_shape], teacher_shape, &DEVICE, 7)?;
    let same = outputs(&teacher_logits, &teacher);
    let breakdown = objective.compute(&same, &[same], &loss_batch, 0, 1)?;
    assert_eq!(scalar(&breakdown.total), 0.0);

    let prediction = Objective::new(
        &stages["prediction"],
        &[teacher_shape],
        student_shape,
        &DEVICE,
        7,
    )?;
    assert!(prediction.params().vars().is_empty());

    // Only the stage that compares attention asks the models to keep their maps, and a pass
    // that skipped them is an error that says so.
    assert_eq!(objective.attention_maps(), AttentionMaps::Keep);
    assert_eq!(prediction.attention_maps(), AttentionMaps::Skip);
    let without_maps = BertOutput {
        attention_scores: Vec::new(),
        ..teacher.clone()
    };
    let skipped = outputs(&teacher_logits, &without_maps);
    let error = objective
        .compute(&skipped, &[same], &loss_batch, 0, 1)
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("kept no attention maps"),
        "{error:#}"
    );
    Ok(())
}

#[test]
fn fsp_and_mmd_components_compare_the_layers_their_recipe_names() -> Result<()> {
    let config: ObjectiveConfig = toml::from_str(GRAM_MATRICES)?;
    assert_eq!(round_trip(&config), config);
    assert_eq!(
        (config.components.iter().map(|c| c.kind)).collect::<Vec<_>>(),
        [LossKind::Fsp, LossKind::Fsp, LossKind::Mmd]
    );

    // A 2-layer, 8-wide student of a 4-layer, 12-wide teacher: each fsp component projects
    // the student's states (12×8); mmd compares token similarities across the widths.
    let (student_shape, teacher_shape) = (shape(2, 8, 2), shape(4, 12, 2));
    let objective = Objective::new(&config, &[teacher_shape], student_shape, &DEVICE, 7)?;
    let names: Vec<String> = (objective.params().vars().into_iter())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        ["fsp.bias", "fsp.weight", "fsp_top.bias", "fsp_top.weight"]
    );
    // fsp's default pairs: the embedding output, then the uniform mapping's (1, 2), (2, 4).
    assert_eq!(objective.teacher_hidden_layers(), Some(vec![0, 2, 4]));
    assert!(objective.needs_teacher_states());
    assert_eq!(objective.attention_maps(), AttentionMaps::Skip);

    let mask = padding_mask(&[4, 2], 4);
    let (student, teacher) = (
        encoder_outputs(student_shape, &mask, 1),
        encoder_outputs(teacher_shape, &mask, 2),
    );
    let logits = random(&[2, 3], 3);
    let breakdown = objective.compute(
        &outputs(&logits, &student),
        &[outputs(&logits, &teacher)],
        &batch(&mask, None),
        0,
        1,
    )?;
    let projected = |component: &str, layer: usize| -> Result<Tensor> {
        let weight = objective
            .params()
            .get(&format!("{component}.weight"))
            .unwrap();
        let bias = objective
            .params()
            .get(&format!("{component}.bias"))
            .unwrap();
        Ok(student
            .layer(layer)
            .broadcast_matmul(&weight.t()?)?
            .broadcast_add(bias.as_tensor())?)
    };
    let fsp = |component: &str, (si, ti): (usize, usize), (sj, tj): (usize, usize)| {
        let student = [projected(component, si)?, projected(component, sj)?];
        let teacher = [teacher.layer(ti), teacher.layer(tj)];
        anyhow::Ok(scalar(&fsp_loss(
            [&student[0], &student[1]],
            teacher,
            &mask,
        )?))
    };
    let expected = BTreeMap::from([
        (
            "fsp",
            fsp("fsp", (0, 0), (1, 2))? + fsp("fsp", (1, 2), (2, 4))?,
        ),
        ("fsp_top", fsp("fsp_top", (1, 2), (2, 4))?),
        (
            "mmd",
            scalar(&mmd_loss(student.layer(1), teacher.layer(2), &mask)?)
                + scalar(&mmd_loss(student.layer(2), teacher.layer(4), &mask)?),
        ),
    ]);
    for (name, value) in &expected {
        assert!(*value > 0.0, "{name}");
        assert_close(breakdown.components[*name], *value);
    }
    let weighted = 2.0 * expected["fsp"] + expected["fsp_top"] + expected["mmd"];
    assert_close(scalar(&breakdown.total), weighted);
    Ok(())
}

#[test]
fn relation_components_compare_the_projections_their_recipe_names() -> Result<()> {
    let config: ObjectiveConfig = toml::from_str(RELATIONS)?;
    assert_eq!(round_trip(&config), config);
    assert_eq!(config.components[2].relation_heads, Some(4));

    // A 2-layer, 8-wide student of a 4-layer, 12-wide teacher, both with two heads: no
    // projection, the teacher live (no cache holds its projections), and the passes keep the
    // projections without the attention maps.
    let (student_shape, teacher_shape) = (shape(2, 8, 2), shape(4, 12, 2));
    let objective = Objective::new(&config, &[teacher_shape], student_shape, &DEVICE, 7)?;
    assert!(objective.params().vars().is_empty());
    assert_eq!(objective.teacher_hidden_layers(), None);
    assert_eq!(objective.attention_maps(), AttentionMaps::Projections);

    let mask = padding_mask(&[4, 2], 4);
    let (student, teacher) = (
        encoder_outputs(student_shape, &mask, 1),
        encoder_outputs(teacher_shape, &mask, 2),
    );
    let logits = random(&[2, 3], 3);
    let loss_batch = batch(&mask, None);
    let breakdown = objective.compute(
        &outputs(&logits, &student),
        &[outputs(&logits, &teacher)],
        &loss_batch,
        0,
        1,
    )?;
    // Layers count from 1: the last pair is (2, 4), the explicit one (2, 3).
    let (s, t) = (
        &student.attention_projections,
        &teacher.attention_projections,
    );
    let relation = |student: &Tensor, teacher: &Tensor, heads| {
        anyhow::Ok(scalar(&relation_kl(student, teacher, heads, &mask)?))
    };
    let relations = |student: &AttentionProjections, teacher: &AttentionProjections, heads| {
        anyhow::Ok(
            relation(&student.query, &teacher.query, heads)?
                + relation(&student.key, &teacher.key, heads)?
                + relation(&student.value, &teacher.value, heads)?,
        )
    };
    let expected = BTreeMap::from([
        ("value_relation", relation(&s[1].value, &t[3].value, 2)?),
        ("attention_relations", relations(&s[1], &t[3], 2)?),
        ("upper_middle", relations(&s[1], &t[2], 4)?),
    ]);
    for (name, value) in &expected {
        assert!(*value > 0.0, "{name}");
        assert_close(breakdown.components[*name], *value);
    }
    let weighted = expected["value_relation"]
        + 2.0 * expected["attention_relations"]
        + expected["upper_middle"];
    assert_close(scalar(&breakdown.total), weighted);

    // Between identical models the relations of the same layers agree (the upper-middle
    // teacher layer is another layer), and a pass that kept no projections is an error that
    // says so.
    let objective = Objective::new(&config, &[teacher_shape], teacher_shape, &DEVICE, 7)?;
    let same = outputs(&logits, &teacher);
    let breakdown = objective.compute(&same, &[same], &loss_batch, 0, 1)?;
    for name in ["value_relation", "attention_relations"] {
        assert_close(breakdown.components[name], 0.0);
    }
    let without_projections = BertOutput {
        attention_projections: Vec::new(),
        ..teacher.clone()
    };
    let error = objective
        .compute(
            &outputs(&logits, &without_projections),
            &[same],
            &loss_batch,
            0,
            1,
        )
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("kept no attention projections"),
        "{error:#}"
    );
    Ok(())
}

#[test]
fn projections_are_initialised_reproducibly_from_the_seed() -> Result<()> {
    let config: ObjectiveConfig = toml::from_str(r#"components = [{ kind = "hidden_mse" }]"#)?;
    let weights = |seed| -> Result<Vec<f32>> {
        let objective = Objective::new(&config, &[shape(4, 12, 2)], shape(2, 8, 2), &DEVICE, seed)?;
        let weight = objective.params().get("hidden_mse.weight").unwrap();
        let bias = objective.params().get("hidden_mse.bias").unwrap();
        assert_eq!(bias.as_tensor().abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(weight.as_tensor().flatten_all()?.to_vec1()?)
    };
    let first = weights(3)?;
    assert_eq!(first, weights(3)?);
    assert_ne!(first, weights(4)?);
    let std = (first.iter().map(|w| w * w).sum::<f32>() / first.len() as f32).sqrt();
    assert!((0.01..0.03).contains(&std), "std {std}, BERT's is 0.02");
    Ok(())
}

#[test]
fn schedules_move_the_temperature_and_the_hard_label_weight() -> Result<()> {
    let config: ObjectiveConfig = toml::from_str(
        r#"
        temperature = { from = 4.0, to = 1.0 }
        components = [
            { kind = "kl" },
            { kind = "hard", weight = { from = 0.0, to = 1.0 } },
        ]
        "#,
    )?;
    assert_eq!(round_trip(&config), config);
    let model = shape(1, 4, 1);
    let objective = Objective::new(&config, &[model], model, &DEVICE, 0)?;
    let mask = padding_mask(&[3, 3], 3);
    let encoder = encoder_outputs(model, &mask, 1);
    let (student_logits, teacher_logits) = (random(&[2, 3], 2), random(&[2, 3], 3));
    let labels = Tensor::new(&[2u32, 0], &DEVICE)?;
    let loss_batch = batch(&mask, Some(&labels));
    let at = |step| {
        objective.compute(
            &outputs(&student_logits, &encoder),
            &[outputs(&teacher_logits, &encoder)],
            &loss_batch,
            step,
            10,
        )
    };
    let kl_at = |temperature| -> Result<f32> {
        let targets = soft_targets(&teacher_logits, temperature)?;
        Ok(scalar(&kd_losses::kl_divergence(
            &student_logits,
            &targets,
            temperature,
            None,
        )?))
    };
    let hard = scalar(&hard_cross_entropy(&student_logits, &labels, None)?);
    let start = at(0)?;
    assert_close(start.components["kl"], kl_at(4.0)?);
    assert_close(scalar(&start.total), kl_at(4.0)?);
    let middle = at(5)?;
    assert_close(middle.components["kl"], kl_at(2.5)?);
    assert_close(scalar(&middle.total), kl_at(2.5)? + 0.5 * hard);
    let end = at(10)?;
    assert_close(scalar(&end.total), kl_at(1.0)? + hard);
    Ok(())
}

#[test]
fn an_ensemble_of_teachers_gives_weighted_soft_targets() -> Result<()> {
    let config: ObjectiveConfig = toml::from_str(
        r#"
        teacher_weights = [1.0, 3.0]
        components = [{ kind = "soft_ce" }, { kind = "logits_mse" }]
        "#,
    )?;
    let model = shape(1, 4, 1);
    let objective = Objective::new(&config, &[model, model], model, &DEVICE, 0)?;
    let mask = padding_mask(&[2], 2);
    let encoder = encoder_outputs(model, &mask, 1);
    let ln3 = 3f32.ln();
    // Teachers' distributions [1/4, 3/4] and [1/2, 1/2], weighted 1:3: [7/16, 9/16].
    let first = Tensor::new(&[[0.0f32, ln3]], &DEVICE)?;
    let second = Tensor::new(&[[0.0f32, 0.0]], &DEVICE)?;
    let student = Tensor::new(&[[0.0f32, ln3]], &DEVICE)?;
    let breakdown = objective.compute(
        &outputs(&student, &encoder),
        &[outputs(&first, &encoder), outputs(&second, &encoder)],
        &batch(&mask, None),
        0,
        1,
    )?;
    let cross_entropy = -(7.0 / 16.0 * 0.25f32.ln() + 9.0 / 16.0 * 0.75f32.ln());
    assert_close(breakdown.components["soft_ce"], cross_entropy);
    // Averaged logits [0, ln 3 / 4] against the student's [0, ln 3].
    let logits_mse = (0.75 * ln3).powi(2) / 2.0;
    assert_close(breakdown.components["logits_mse"], logits_mse);
    Ok(())
}

#[test]
fn regression_students_take_mse_against_float_labels() -> Result<()> {
    let config: ObjectiveConfig = toml::from_str(
        r#"components = [{ kind = "logits_mse" }, { kind = "hard", weight = 0.5 }]"#,
    )?;
    let model = shape(1, 4, 1);
    let objective = Objective::new(&config, &[model], model, &DEVICE, 0)?;
    let mask = padding_mask(&[2, 2], 2);
    let encoder = encoder_outputs(model, &mask, 1);
    let student = Tensor::new(&[[1.0f32], [3.0]], &DEVICE)?;
    let teacher = Tensor::new(&[[2.0f32], [3.0]], &DEVICE)?;
    let scores = Tensor::new(&[4.0f32, 1.0], &DEVICE)?;
    let breakdown = objective.compute(
        &outputs(&student, &encoder),
        &[outputs(&teacher, &encoder)],
        &batch(&mask, Some(&scores)),
        0,
        1,
    )?;
    assert_close(breakdown.components["logits_mse"], 0.5);
    assert_close(breakdown.components["hard"], 6.5);
    assert_close(scalar(&breakdown.total), 0.5 + 0.5 * 6.5);
    Ok(())
}

#[test]
fn invalid_objectives_fail_at_construction() {
    let (student, teacher) = (shape(2, 8, 2), shape(4, 12, 2));
    let cases = [
        (
            r#"components = [{ kind = "hidden_mse", layers = { explicit = [[3, 1]] } }]"#,
            "student layer 3, the student has 2",
        ),
        (
            r#"components = [{ kind = "pkd", layers = { explicit = [[1, 5]] } }]"#,
            "teacher layer 5, the teacher has 4",
        ),
        (
            r#"components = [{ kind = "cosine", layers = { last_k = 3 } }]"#,
            "last_k = 3",
        ),
        (
            r#"components = [{ kind = "attention_kl", layers = { explicit = [[0, 0]] } }]"#,
            "no attention",
        ),
        (
            r#"components = [{ kind = "fsp", layers = { last_k = 1 } }]"#,
            "fsp compares the flow between consecutive layer pairs: it needs two or more",
        ),
        (
            r#"components = [{ kind = "value_relation", layers = { explicit = [[0, 0]] } }]"#,
            "no attention",
        ),
        (
            r#"components = [{ kind = "attention_relations", relation_heads = 3 }]"#,
            "the student's 8 does not split into 3",
        ),
        (
            r#"components = [{ kind = "attention_relations", relation_heads = 8 }]"#,
            "the teacher's 12 does not split into 8",
        ),
        (
            r#"components = [{ kind = "attention_relations", relation_heads = 0 }]"#,
            "does not split into 0",
        ),
        (
            r#"components = [{ kind = "value_relation", relation_heads = 2 }]"#,
            "value_relation takes no `relation_heads`",
        ),
        (
            r#"components = [{ kind = "soft_ce", layers = "uniform" }]"#,
            "takes no `layers`",
        ),
        (
            r#"components = [{ kind = "embedding_mse", layers = "uniform" }]"#,
            "takes no `layers`",
        ),
        (
            r#"components = [{ kind = "hard" }, { kind = "hard" }]"#,
            "two components are named hard",
        ),
        (
            r#"teacher_weights = [1.0, 1.0]
            components = [{ kind = "soft_ce" }]"#,
            "2 weights for 1 teachers",
        ),
        (
            r#"temperature = { from = 2.0, to = 0.0 }
            components = [{ kind = "kl" }]"#,
            "temperature must stay positive",
        ),
        ("components = []", "needs components"),
        (
            r#"components = [{ kind = "soft_ce", weight = 0.0 }, { kind = "hard", weight = 0 }]"#,
            "every component's weight is 0",
        ),
    ];
    for (recipe, message) in cases {
        let config: ObjectiveConfig = toml::from_str(recipe).unwrap();
        let error = Objective::new(&config, &[teacher], student, &DEVICE, 0)
            .err()
            .unwrap();
        let error = format!("{error:#}");
        assert!(error.contains(message), "{recipe}: {error}");
    }

    // Head-by-head attention losses need the teacher's head count; MiniLMv2's relations,
    // whose relation heads split the concatenated heads, do not.
    for kind in ["attention_mse", "value_relation"] {
        let attention: ObjectiveConfig =
            toml::from_str(&format!(r#"components = [{{ kind = "{kind}" }}]"#)).unwrap();
        let error = Objective::new(&attention, &[shape(4, 12, 4)], student, &DEVICE, 0)
            .err()
            .unwrap();
        assert!(format!("{error:#}").contains("as many heads"), "{error:#}");
    }
    let relations: ObjectiveConfig =
        toml::from_str(r#"components = [{ kind = "attention_relations" }]"#).unwrap();
    assert!(Objective::new(&relations, &[shape(4, 12, 4)], student, &DEVICE, 0).is_ok());
    // An ensemble's layer components pair layers with the first teacher's depth (the
    // second's does not matter; tests/distill.rs checks the values end to end).
    let hidden: ObjectiveConfig =
        toml::from_str(r#"components = [{ kind = "hidden_mse" }]"#).unwrap();
    let other = shape(12, 32, 2);
    let ensemble = Objective::new(&hidden, &[teacher, other], student, &DEVICE, 0).unwrap();
    // The projection maps the student's width (8) to the first teacher's (12).
    let projection = ensemble.params().get("hidden_mse.weight").unwrap();
    assert_eq!(projection.dims(), [12, 8]);
    let explicit: ObjectiveConfig = toml::from_str(
        r#"components = [{ kind = "hidden_mse", layers = { explicit = [[1, 6]] } }]"#,
    )
    .unwrap();
    let error = Objective::new(&explicit, &[teacher, other], student, &DEVICE, 0)
        .err()
        .unwrap();
    assert!(
        format!("{error:#}").contains("teacher layer 6"),
        "{error:#}"
    );

    for typo in [
        r#"components = [{ kind = "soft_ce", wieght = 2.0 }]"#,
        r#"components = [{ kind = "soft_cross_entropy" }]"#,
        r#"components = [{ kind = "hard", weight = { from = 1.0, too = 0.0 } }]"#,
        r#"components = [{ kind = "hidden_mse", layers = "every_other" }]"#,
    ] {
        assert!(toml::from_str::<ObjectiveConfig>(typo).is_err(), "{typo}");
    }
}

fn tiny_config(layers: usize, hidden_size: usize) -> BertConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 20,
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden_size,
        "max_position_embeddings": 16,
    }))
    .unwrap()
}

#[test]
fn gradients_reach_every_student_and_projection_parameter_and_no_teacher_parameter() -> Result<()> {
    let build = |config: &BertConfig, seed| -> Result<_> {
        let params = Params::new(&DEVICE);
        let model = BertForSequenceClassification::new(config, 3, params.var_builder())?;
        params.init_bert(0.02, seed)?;
        Ok((model, params))
    };
    let (student_config, teacher_config) = (tiny_config(2, 8), tiny_config(4, 12));
    let (student, student_params) = build(&student_config, 1)?;
    let (teacher, teacher_params) = build(&teacher_config, 2)?;
    let config: ObjectiveConfig = toml::from_str(
        r#"
        temperature = 2.0
        components = [
            { kind = "embedding_mse" },
            { kind = "hidden_mse" },
            { kind = "attention_mse" },
            { kind = "attention_kl" },
            { kind = "pkd", layers = "uniform" },
            { kind = "cosine" },
            { kind = "fsp" },
            { kind = "mmd" },
            { kind = "value_relation" },
            { kind = "attention_relations" },
            { kind = "soft_ce" },
            { kind = "hard" },
        ]
        "#,
    )?;
    let objective = Objective::new(
        &config,
        &[EncoderShape::from(&teacher_config)],
        EncoderShape::from(&student_config),
        &DEVICE,
        0,
    )?;
    let input = BertInput {
        input_ids: Tensor::new(&[[1u32, 5, 7, 2, 0], [1, 9, 2, 0, 0]], &DEVICE)?,
        token_type_ids: Tensor::zeros((2, 5), DType::U32, &DEVICE)?,
        attention_mask: padding_mask(&[4, 3], 5),
    };
    // The teacher runs on the differentiable path too, so that only the losses keep its
    // parameters out of the gradient.
    let mode = Mode::Train { dropout: false };
    let maps = objective.attention_maps();
    assert_eq!(maps, AttentionMaps::KeepWithProjections);
    let (student_logits, student_outputs) = student.forward_with(&input, mode, maps)?;
    let (teacher_logits, teacher_outputs) = teacher.forward_with(&input, mode, maps)?;
    let labels = Tensor::new(&[2u32, 0], &DEVICE)?;
    let breakdown = objective.compute(
        &outputs(&student_logits, &student_outputs),
        &[outputs(&teacher_logits, &teacher_outputs)],
        &batch(&input.attention_mask, Some(&labels)),
        0,
        1,
    )?;
    assert!(
        breakdown
            .components
            .values()
            .all(|v| v.is_finite() && *v > 0.0),
        "{:?}",
        breakdown.components
    );
    let grads = breakdown.total.backward()?;
    let trained = student_params
        .vars()
        .into_iter()
        .chain(objective.params().vars());
    for (name, var) in trained {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm: f32 = grad.sqr()?.sum_all()?.to_scalar()?;
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm² {norm}"
        );
    }
    for (name, var) in teacher_params.vars() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "the teacher's {name} has a gradient"
        );
    }
    Ok(())
}

#[test]
fn prediction_only_objectives_work_from_teacher_logits_alone() -> Result<()> {
    let (student_shape, teacher_shape) = (shape(2, 8, 2), shape(4, 12, 2));
    let build = |text: &str| -> Result<Objective> {
        let config: ObjectiveConfig = toml::from_str(text)?;
        Objective::new(&config, &[teacher_shape], student_shape, &DEVICE, 0)
    };
    let logits_only = build("components = [{ kind = \"soft_ce\" }, { kind = \"hard\" }]")?;
    assert!(!logits_only.needs_teacher_states());
    assert!(build(DISTILBERT)?.needs_teacher_states());

    let mask = padding_mask(&[3, 2], 3);
    let encoder = encoder_outputs(student_shape, &mask, 1);
    let (student_logits, teacher_logits) = (random(&[2, 3], 2), random(&[2, 3], 3));
    let labels = Tensor::new(&[0u32, 2], &DEVICE)?;
    let teacher = DistillOutputs {
        logits: Some(&teacher_logits),
        encoder: None,
    };
    let breakdown = logits_only.compute(
        &outputs(&student_logits, &encoder),
        &[teacher],
        &batch(&mask, Some(&labels)),
        0,
        1,
    )?;
    let expected = soft_cross_entropy(
        &student_logits,
        &soft_targets(&teacher_logits, 1.0)?,
        1.0,
        None,
    )?;
    assert_close(breakdown.components["soft_ce"], scalar(&expected));
    // A layer loss without the teacher's states is an error, not a silent zero.
    let error = build(DISTILBERT)?
        .compute(
            &outputs(&student_logits, &encoder),
            &[teacher],
            &batch(&mask, Some(&labels)),
            0,
            1,
        )
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("teacher's states"),
        "{error:#}"
    );
    Ok(())
}

#[test]
fn hard_labels_alone_need_no_teacher_outputs() -> Result<()> {
    let model = shape(1, 4, 1);
    let build = |text: &str| -> Result<Objective> {
        let config: ObjectiveConfig = toml::from_str(text)?;
        Objective::new(&config, &[model], model, &DEVICE, 0)
    };
    let hard_only = build("components = [{ kind = \"hard\", weight = 2.0 }]")?;
    assert!(!hard_only.needs_teacher());
    let mask = padding_mask(&[2, 1], 2);
    let encoder = encoder_outputs(model, &mask, 1);
    let logits = random(&[2, 3], 2);
    let labels = Tensor::new(&[1u32, 0], &DEVICE)?;
    let without_teacher = |objective: &Objective| {
        objective.compute(
            &outputs(&logits, &encoder),
            &[],
            &batch(&mask, Some(&labels)),
            0,
            1,
        )
    };
    let breakdown = without_teacher(&hard_only)?;
    let expected = scalar(&hard_cross_entropy(&logits, &labels, None)?);
    assert_close(breakdown.components["hard"], expected);
    assert_close(scalar(&breakdown.total), 2.0 * expected);

    // An objective that reads the teacher refuses to run without its outputs.
    let soft = build("components = [{ kind = \"soft_ce\" }, { kind = \"hard\" }]")?;
    assert!(soft.needs_teacher());
    let error = without_teacher(&soft).unwrap_err();
    assert!(
        format!("{error:#}").contains("built for 1 teachers"),
        "{error:#}"
    );
    Ok(())
}

/// A tiny encoder with both heads a distillation reads: a classifier and the masked-LM head.
struct TinyModel {
    params: Params,
    classifier: BertForSequenceClassification,
    mlm: MaskedLmHead,
}

impl TinyModel {
    fn new(config: &BertConfig, seed: u64) -> Result<Self> {
        let params = Params::new(&DEVICE);
        let vb = params.var_builder();
        let classifier = BertForSequenceClassification::new(config, 3, vb.clone())?;
        let mlm = MaskedLmHead::new(config, vb.pp("cls").pp("predictions"))?;
        params.init_bert(0.02, seed)?;
        Ok(Self {
            params,
            classifier,
            mlm,
        })
    }

    /// The logits (per masked position with `positions`, else per example) and the encoder's
    /// outputs, with what `objective` reads of the attention.
    fn forward(
        &self,
        input: &BertInput,
        mode: Mode,
        positions: Option<&Tensor>,
        objective: &Objective,
    ) -> Result<(Tensor, BertOutput)> {
        let maps = objective.attention_maps();
        let (logits, output) = self.classifier.forward_with(input, mode, maps)?;
        let logits = match positions {
            Some(positions) => self.mlm.forward(
                output.last_hidden_state(),
                positions,
                self.classifier.bert.word_embeddings(),
            )?,
            None => logits,
        };
        Ok((logits, output))
    }
}

/// The generic kernels (what runs off the CPU) against the fused CPU kernels through one
/// training pass of each kind of objective, with dropout (the same masks on both paths): every
/// parameter that gets a gradient on one path gets it on the other, within 1e-4 of its largest
/// element.
#[test]
fn the_generic_kernels_give_the_fused_gradients_for_every_objective_kind() -> Result<()> {
    let kinds = [
        ("DistilBERT", 1, false, DISTILBERT),
        (
            "TinyBERT, intermediate layers",
            1,
            false,
            r#"components = [
                { kind = "embedding_mse" },
                { kind = "hidden_mse", layers = "uniform" },
                { kind = "attention_mse", layers = "uniform" },
            ]"#,
        ),
        (
            "TinyBERT, prediction layer",
            1,
            false,
            r#"components = [{ kind = "soft_ce" }]"#,
        ),
        (
            "BERT-PKD",
            1,
            false,
            r#"temperature = 2.0
            components = [
                { kind = "pkd", layers = "uniform", weight = 100.0 },
                { kind = "soft_ce", weight = 0.5 },
                { kind = "hard", weight = 0.5 },
            ]"#,
        ),
        ("FSP and NST", 1, false, GRAM_MATRICES),
        (
            "MiniLM and MiniLMv2 relations, with soft targets for the layers above",
            1,
            false,
            r#"components = [
                { kind = "value_relation", layers = "uniform" },
                { kind = "attention_relations", relation_heads = 4 },
                { kind = "soft_ce" },
            ]"#,
        ),
        (
            "MT-DNN, two teachers",
            2,
            false,
            r#"temperature = 1.0
            teacher_weights = [0.7, 0.3]
            components = [{ kind = "soft_ce" }, { kind = "hard" }]"#,
        ),
        ("masked-LM general stage", 1, true, DISTILBERT),
    ];
    let (student_config, teacher_config) = (tiny_config(2, 8), tiny_config(4, 12));
    let student = TinyModel::new(&student_config, 1)?;
    let teachers = [
        TinyModel::new(&teacher_config, 2)?,
        TinyModel::new(&teacher_config, 3)?,
    ];
    let input = BertInput {
        input_ids: Tensor::new(&[[1u32, 5, 7, 2, 0], [1, 9, 3, 12, 2]], &DEVICE)?,
        token_type_ids: Tensor::zeros((2, 5), DType::U32, &DEVICE)?,
        attention_mask: padding_mask(&[4, 5], 5),
    };
    let class_labels = Tensor::new(&[2u32, 0], &DEVICE)?;
    let (positions, token_labels) = (
        Tensor::new(&[1u32, 7, 8], &DEVICE)?,
        Tensor::new(&[5u32, 9, 3], &DEVICE)?,
    );
    for (kind, teacher_count, masked_lm, recipe) in kinds {
        let config: ObjectiveConfig = toml::from_str(recipe)?;
        let teachers = &teachers[..teacher_count];
        let objective = Objective::new(
            &config,
            &vec![EncoderShape::from(&teacher_config); teacher_count],
            EncoderShape::from(&student_config),
            &DEVICE,
            0,
        )?;
        let (positions, labels) = match masked_lm {
            true => (Some(&positions), &token_labels),
            false => (None, &class_labels),
        };
        let pass = || -> Result<_> {
            student.classifier.bert.dropout_rng().reseed(7);
            let mode = Mode::Train { dropout: true };
            let (logits, outputs) = student.forward(&input, mode, positions, &objective)?;
            let teacher_outputs = teachers
                .iter()
                .map(|teacher| teacher.forward(&input, Mode::Inference, positions, &objective))
                .collect::<Result<Vec<_>>>()?;
            let teacher_outputs: Vec<_> = teacher_outputs
                .iter()
                .map(|(logits, encoder)| DistillOutputs {
                    logits: Some(logits),
                    encoder: Some(encoder),
                })
                .collect();
            let breakdown = objective.compute(
                &DistillOutputs {
                    logits: Some(&logits),
                    encoder: Some(&outputs),
                },
                &teacher_outputs,
                &batch(&input.attention_mask, Some(labels)),
                0,
                1,
            )?;
            Ok(breakdown.total.backward()?)
        };
        let fused = pass()?;
        let generic = kd_bert::kernels::force_generic(pass)?;
        let trained: Vec<_> = (student.params.vars().into_iter())
            .chain(objective.params().vars())
            .filter_map(|(name, var)| {
                match (fused.get(var.as_tensor()), generic.get(var.as_tensor())) {
                    (None, None) => None,
                    (Some(fused), Some(generic)) => Some((name, fused.clone(), generic.clone())),
                    _ => panic!("{kind}: {name} has a gradient on one path only"),
                }
            })
            .collect();
        let largest = |grad: &Tensor| -> Result<f32> { Ok(grad.abs()?.max_all()?.to_scalar()?) };
        let mut overall = 0f32;
        for (_, fused, _) in &trained {
            overall = overall.max(largest(fused)?);
        }
        for (name, fused, generic) in &trained {
            let (scale, diff) = (largest(fused)?, largest(&(fused - generic)?)?);
            // Rounding noise is measured against the whole gradient where a parameter's own is
            // near zero: a key bias's is zero in truth (a shift of every score of a query leaves
            // its softmax as it is), and tiny initial weights leave some others at 1e-11.
            let tolerance = 1e-4 * scale.max(1e-5 * overall);
            assert!(diff <= tolerance, "{kind}: {name}: {diff} of {scale}");
        }
        let compared = trained.len();
        let encoder_tensors = 16 * student_config.num_hidden_layers;
        assert!(
            compared > encoder_tensors,
            "{kind}: {compared} gradients compared"
        );
    }
    Ok(())
}
