//! ONNX export of a task model of any family kd reads: embeddings, encoder, pooler (or the
//! first layer of the family's head) and classifier as one graph (opset 17; batch and sequence
//! length given at run time) with its weights inline: f32, or with int8 linear layers in the
//! form of ONNX Runtime's dynamic quantization (activations quantized per tensor at run time,
//! DynamicQuantizeLinear + MatMulInteger, weights per output channel) and optionally an int8
//! word-embedding table with a scale per token. Inputs `input_ids`, `attention_mask` and, for
//! models that read token types (BERT's and ELECTRA's, two or more), `token_type_ids` (int64,
//! `[batch, sequence]`); output `logits` (`[batch, labels]`): the names HF's ONNX exports use.
//! What the families differ in is data here as in kd's model ([`kd_bert::Family`]): positions
//! counted from the padding index (RoBERTa, XLM-R, MPNet), ELECTRA's embedding projection,
//! MPNet's relative-position bias (its buckets a table of the graph, as exact as kd's), the
//! head's activation.

mod proto;

use crate::{ExportOptions, Precision, Quantization};
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor};
use kd_bert::family::{HeadActivation, relative_position_bucket};
use kd_bert::int8::quantize_rows;
use kd_bert::{BertConfig, write_atomically};
use kd_teacher::{ModelFiles, TaskModel};
use prost::Message;
use proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use std::path::Path;

/// LayerNormalization and Shape's `start`/`end` need opset 17 and 15.
pub const OPSET: i64 = 17;
/// The IR version that opset 17 came with.
const IR_VERSION: i64 = 8;
/// A quantized weight's int8 level `q` is stored as the uint8 `q + 128`, with 128 as
/// MatMulInteger's zero point: the same products as int8 weights, but u8 x u8, which ONNX
/// Runtime computes exactly on every CPU. Its u8 x s8 kernels for x86 without AVX-512 VNNI
/// add pairs of products in saturating 16-bit lanes (`vpmaddubsw`), which the activations'
/// full uint8 range overflows (ONNX Runtime's quantization guide): on an AMD EPYC the
/// logits moved by up to 0.47 where tract's stayed within 0.06, and 7-bit weights
/// (the guide's other cure) cost 0.34 points of SST-2 accuracy (`compare-sst2.md`).
const WEIGHT_ZERO_POINT: u8 = 128;
/// The file an ONNX export's graph is in.
pub const ONNX_FILE: &str = "model.onnx";

/// Writes `model` (a task model in any format kd loads, its weights read as f32) as
/// `out/model.onnx`, atomically, the weights `quantization` covers as int8. Returns the file's
/// size in bytes and the number of weights stored as int8.
pub fn write(
    model: &ModelFiles,
    out: &Path,
    quantization: Option<Quantization>,
) -> Result<(u64, usize)> {
    let task_model = TaskModel::load(model, usize::MAX, &candle_core::Device::Cpu)
        .with_context(|| format!("cannot load {} to export it", model.dir.display()))?;

    let (graph, quantized_tensors) = bert_classifier(&task_model, quantization)?;
    let proto = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "kd".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("exported from {}", model.dir.display()),
        graph: Some(graph),
    };
    let path = out.join(ONNX_FILE);
    write_atomically(&path, |tmp| {
        std::fs::write(tmp, proto.encode_to_vec())
            .with_context(|| format!("cannot write {}", tmp.display()))
    })?;
    Ok((std::fs::metadata(&path)?.len(), quantized_tensors))
}

/// The whole model as a graph, and how many of its parameters it stores as int8.
fn bert_classifier(
    model: &TaskModel,
    quantization: Option<Quantization>,
) -> Result<(GraphProto, usize)> {
    let config = &model.config;
    let family = config.family();
    let mut graph = Graph::new(model, quantization);
    let ids = "input_ids";
    let reads_token_types = family.has_token_types() && config.type_vocab_size > 1;

    // Embeddings: words, positions, token types, the layer norm, ELECTRA's projection.
    let words = graph.word_embeddings(ids)?;
    let positions = graph.position_embeddings(ids)?;
    let mut summed = graph.op("Add", &[&words, &positions], &[]);
    if family.has_token_types() {
        let type_table = graph.weight("bert.embeddings.token_type_embeddings.weight")?;
        // A table of one row (RoBERTa's) adds that row whatever the ids.
        let types = match reads_token_types {
            true => graph.op("Gather", &[&type_table, "token_type_ids"], &[]),
            false => type_table,
        };
        summed = graph.op("Add", &[&summed, &types], &[]);
    }
    let mut hidden = graph.layer_norm(&summed, "bert.embeddings.LayerNorm")?;
    if config.embedding_size() != config.hidden_size {
        hidden = graph.linear(&hidden, "bert.embeddings_project")?;
    }

    // The attention mask as kd's model adds it to the scores: 0 for real keys, f32::MIN for
    // padding, `[batch, 1, 1, keys]`; with MPNet's relative-position bias added,
    // `[batch, heads, queries, keys]`.
    let mask = graph.op(
        "Cast",
        &["attention_mask"],
        &[("to", Attr::Int(proto::FLOAT as i64))],
    );
    let one = graph.float(1.0);
    let padding = graph.op("Sub", &[&one, &mask], &[]);
    let lowest = graph.float(f32::MIN);
    let bias = graph.op("Mul", &[&padding, &lowest], &[]);
    let axes = graph.int64s(&[1, 2]);
    let mut bias = graph.op("Unsqueeze", &[&bias, &axes], &[]);
    if family.relative_attention() {
        let relative = graph.relative_position_bias(ids)?;
        bias = graph.op("Add", &[&bias, &relative], &[]);
    }

    for layer in 0..config.num_hidden_layers {
        // A layer whose heads were pruned (`kd prune`) has fewer of them, and its weights
        // fewer rows: its graph is built for its own count; MPNet's bias, one slice a head,
        // keeps the slices of the heads left.
        let heads = config.remaining_heads(layer);
        let layer_bias =
            match family.relative_attention() && heads.len() < config.num_attention_heads {
                true => {
                    let kept: Vec<i64> = heads.iter().map(|&head| head as i64).collect();
                    let kept = graph.int64s(&kept);
                    graph.op("Gather", &[&bias, &kept], &[("axis", Attr::Int(1))])
                }
                false => bias.clone(),
            };
        let prefix = format!("bert.encoder.layer.{layer}");
        hidden = graph.encoder_layer(&hidden, &layer_bias, heads.len(), &prefix)?;
    }

    // The pooler (or the head's first layer) reads the [CLS] position; the classifier the
    // pooled vector.
    let first = graph.int64_scalar(0);
    let cls = graph.op("Gather", &[&hidden, &first], &[("axis", Attr::Int(1))]);
    let pooled = graph.linear(&cls, "bert.pooler.dense")?;
    let pooled = match family.head_activation() {
        HeadActivation::Tanh => graph.op("Tanh", &[&pooled], &[]),
        HeadActivation::Relu => graph.op("Relu", &[&pooled], &[]),
        HeadActivation::Gelu => graph.gelu(&pooled),
    };
    let logits = graph.linear(&pooled, "classifier")?;
    graph.rename_output(&logits, "logits");

    let dynamic = |name: &str| Dimension {
        value: Some(DimensionValue::DimParam(name.into())),
    };
    let value = |name: &str, elem_type, dims: Vec<Dimension>| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim: dims }),
            }),
        }),
    };
    let input = |name: &str| {
        value(
            name,
            proto::INT64,
            vec![dynamic("batch"), dynamic("sequence")],
        )
    };
    let labels = Dimension {
        value: Some(DimensionValue::DimValue(model.labels.len() as i64)),
    };
    let quantized_tensors = graph.quantized_tensors;
    let graph = GraphProto {
        name: "bert_for_sequence_classification".into(),
        node: graph.nodes,
        initializer: graph.initializers,
        input: ["input_ids", "attention_mask", "token_type_ids"]
            .into_iter()
            .filter(|name| reads_token_types || *name != "token_type_ids")
            .map(input)
            .collect(),
        output: vec![value(
            "logits",
            proto::FLOAT,
            vec![dynamic("batch"), labels],
        )],
    };
    Ok((graph, quantized_tensors))
}

/// A node attribute's value.
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// A graph under construction: nodes in order, weights and constants as initializers, and a
/// unique name for every value.
struct Graph<'a> {
    model: &'a TaskModel,
    quantization: Option<Quantization>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    values: usize,
    /// The parameters stored as int8 so far.
    quantized_tensors: usize,
}

impl<'a> Graph<'a> {
    fn new(model: &'a TaskModel, quantization: Option<Quantization>) -> Self {
        Self {
            model,
            quantization,
            nodes: Vec::new(),
            initializers: Vec::new(),
            values: 0,
            quantized_tensors: 0,
        }
    }

    fn config(&self) -> &BertConfig {
        &self.model.config
    }

    /// Appends a node with one output and returns the output's name.
    fn op(&mut self, op_type: &str, inputs: &[&str], attributes: &[(&str, Attr)]) -> String {
        self.op_outputs(op_type, inputs, attributes, 1).remove(0)
    }

    /// Appends a node with `outputs` outputs and returns their names.
    fn op_outputs(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: &[(&str, Attr)],
        outputs: usize,
    ) -> Vec<String> {
        self.values += 1;
        let output: Vec<String> = (0..outputs)
            .map(|i| format!("{}_{}_{i}", op_type.to_lowercase(), self.values))
            .collect();
        let attribute = attributes
            .iter()
            .map(|(name, value)| {
                let mut attribute = AttributeProto {
                    name: name.to_string(),
                    ..Default::default()
                };
                match value {
                    Attr::Int(i) => {
                        (attribute.r#type, attribute.i) = (proto::ATTRIBUTE_INT, Some(*i))
                    }
                    Attr::Float(f) => {
                        (attribute.r#type, attribute.f) = (proto::ATTRIBUTE_FLOAT, Some(*f))
                    }
                    Attr::Ints(ints) => {
                        (attribute.r#type, attribute.ints) = (proto::ATTRIBUTE_INTS, ints.clone())
                    }
                }
                attribute
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|name| name.to_string()).collect(),
            output: output.clone(),
            name: format!("{op_type}_{}", self.values),
            op_type: op_type.into(),
            attribute,
        });
        output
    }

    /// The model's parameter `name` as an initializer of that name.
    fn weight(&mut self, name: &str) -> Result<String> {
        let tensor = self.parameter(name)?;
        self.f32_initializer(name, &tensor)
    }

    fn parameter(&self, name: &str) -> Result<Tensor> {
        match self.model.params.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => bail!("the model has no parameter {name} to export"),
        }
    }

    /// An initializer of `data_type` with its little-endian bytes; returns its name.
    fn initializer(
        &mut self,
        name: String,
        dims: &[usize],
        data_type: i32,
        raw_data: Vec<u8>,
    ) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.clone(),
            raw_data,
        });
        name
    }

    fn f32_values(&mut self, name: String, dims: &[usize], values: &[f32]) -> String {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, proto::FLOAT, bytes)
    }

    fn f32_initializer(&mut self, name: &str, tensor: &Tensor) -> Result<String> {
        let values = tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(self.f32_values(name.into(), tensor.dims(), &values))
    }

    /// Whether the parameter `name` is exported as int8 (then counted, for the report).
    fn quantized(&mut self, name: &str, tensor: &Tensor) -> bool {
        let quantized = self.quantization.is_some_and(|q| q.covers(name, tensor));
        self.quantized_tensors += usize::from(quantized);
        quantized
    }

    /// The rows of the word-embedding table for `ids`, `[batch, sequence, hidden]`; from int8
    /// levels times each token's scale when quantized.
    fn word_embeddings(&mut self, ids: &str) -> Result<String> {
        let name = "bert.embeddings.word_embeddings.weight";
        let table = self.parameter(name)?;
        if !self.quantized(name, &table) {
            let table = self.f32_initializer(name, &table)?;
            return Ok(self.op("Gather", &[&table, ids], &[]));
        }
        let (levels, scales) = quantize_rows(&table)?;
        let levels = levels.into_iter().map(|q| q as u8).collect();
        let levels = self.initializer(name.into(), table.dims(), proto::INT8, levels);
        let scales = self.f32_values(format!("{name}_scale"), &[scales.len()], &scales);
        let rows = self.op("Gather", &[&levels, ids], &[]);
        let rows = self.op("Cast", &[&rows], &[("to", Attr::Int(proto::FLOAT as i64))]);
        let row_scales = self.op("Gather", &[&scales, ids], &[]);
        let last = self.int64s(&[-1]);
        let row_scales = self.op("Unsqueeze", &[&row_scales, &last], &[]);
        Ok(self.op("Mul", &[&rows, &row_scales], &[]))
    }

    /// The position embeddings of every token, `[sequence, hidden]` (the table's first rows),
    /// or `[batch, sequence, hidden]` in the families that count positions from the padding
    /// index as kd does: real tokens from the next index on, padding at it.
    fn position_embeddings(&mut self, ids: &str) -> Result<String> {
        let table = self.weight("bert.embeddings.position_embeddings.weight")?;
        let Some(padding) = self.config().position_padding_index() else {
            let sequence = self.sequence_length(ids);
            let zero = self.int64s(&[0]);
            return Ok(self.op("Slice", &[&table, &zero, &sequence, &zero], &[]));
        };
        let axis = self.int64_scalar(1);
        let counted = self.op("CumSum", &["attention_mask", &axis], &[]);
        let counted = self.op("Mul", &[&counted, "attention_mask"], &[]);
        let padding = self.int64_scalar(padding as i64);
        let positions = self.op("Add", &[&counted, &padding], &[]);
        Ok(self.op("Gather", &[&table, &positions], &[]))
    }

    /// The sequence length of `ids`, a 1-D int64 tensor of one element.
    fn sequence_length(&mut self, ids: &str) -> String {
        self.op(
            "Shape",
            &[ids],
            &[("start", Attr::Int(1)), ("end", Attr::Int(2))],
        )
    }

    /// MPNet's relative-position bias of every head, `[1, heads, queries, keys]`: each key's
    /// offset from each query, looked up in a table of the buckets of every offset the
    /// position table allows, then in the model's bias table.
    fn relative_position_bias(&mut self, ids: &str) -> Result<String> {
        let longest = self.config().max_sequence_length() as i64;
        let buckets: Vec<i64> = (-(longest - 1)..longest)
            .map(|offset| relative_position_bucket(offset) as i64)
            .collect();
        let buckets = self.int64_constant(&[buckets.len()], &buckets);
        let sequence = self.sequence_length(ids);
        let sequence = self.op("Squeeze", &[&sequence], &[]);
        let (zero, one) = (self.int64_scalar(0), self.int64_scalar(1));
        let range = self.op("Range", &[&zero, &sequence, &one], &[]);
        let last = self.int64s(&[-1]);
        let first = self.int64s(&[0]);
        let queries = self.op("Unsqueeze", &[&range, &last], &[]);
        let keys = self.op("Unsqueeze", &[&range, &first], &[]);
        let offsets = self.op("Sub", &[&keys, &queries], &[]);
        let shift = self.int64_scalar(longest - 1);
        let offsets = self.op("Add", &[&offsets, &shift], &[]);
        let buckets = self.op("Gather", &[&buckets, &offsets], &[]);
        let table = self.weight("bert.encoder.relative_attention_bias.weight")?;
        let bias = self.op("Gather", &[&table, &buckets], &[]);
        let bias = self.op(
            "Transpose",
            &[&bias],
            &[("perm", Attr::Ints(vec![2, 0, 1]))],
        );
        Ok(self.op("Unsqueeze", &[&bias, &first], &[]))
    }

    fn constant_name(&mut self) -> String {
        self.values += 1;
        format!("constant_{}", self.values)
    }

    /// A scalar f32 constant.
    fn float(&mut self, value: f32) -> String {
        let name = self.constant_name();
        self.f32_values(name, &[], &[value])
    }

    /// A 1-D int64 constant.
    fn int64s(&mut self, values: &[i64]) -> String {
        self.int64_constant(&[values.len()], values)
    }

    /// A scalar int64 constant (a Gather index that drops its axis).
    fn int64_scalar(&mut self, value: i64) -> String {
        self.int64_constant(&[], &[value])
    }

    fn int64_constant(&mut self, dims: &[usize], values: &[i64]) -> String {
        let name = self.constant_name();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, proto::INT64, bytes)
    }

    /// `x W^T + b` for the linear layer `prefix`, with `W^T` stored so that MatMul reads it
    /// as it is. Quantized, `W^T` holds int8 levels (as uint8, [`WEIGHT_ZERO_POINT`]) with a
    /// scale per output column and `x` is quantized at run time (uint8, one scale and zero
    /// point per tensor): the int32 product, times both scales.
    fn linear(&mut self, x: &str, prefix: &str) -> Result<String> {
        let name = format!("{prefix}.weight");
        let weight = self.parameter(&name)?;
        let bias = self.weight(&format!("{prefix}.bias"))?;
        let transposed = format!("{prefix}.weight_transposed");
        let product = if self.quantized(&name, &weight) {
            // W's rows are W^T's columns: quantize by row, then transpose the levels.
            let (levels, scales) = quantize_rows(&weight)?;
            let (rows, columns) = weight.dims2()?;
            let mut transposed_levels = vec![0u8; levels.len()];
            for (i, &q) in levels.iter().enumerate() {
                transposed_levels[(i % columns) * rows + i / columns] =
                    (q as i16 + WEIGHT_ZERO_POINT as i16) as u8;
            }
            let scales = self.f32_values(format!("{transposed}_scale"), &[rows], &scales);
            let levels = self.initializer(
                transposed,
                &[columns, rows],
                proto::UINT8,
                transposed_levels,
            );
            let zero_w = self.constant_name();
            let zero_w = self.initializer(zero_w, &[], proto::UINT8, vec![WEIGHT_ZERO_POINT]);
            let quantized_x = self.op_outputs("DynamicQuantizeLinear", &[x], &[], 3);
            let [levels_x, scale_x, zero_x] = quantized_x.as_slice() else {
                unreachable!("three outputs asked for")
            };
            let inputs = [levels_x.as_str(), &levels, zero_x, &zero_w];
            let product = self.op("MatMulInteger", &inputs, &[]);
            let to_float = Attr::Int(proto::FLOAT as i64);
            let product = self.op("Cast", &[&product], &[("to", to_float)]);
            let scale = self.op("Mul", &[scale_x, &scales], &[]);
            self.op("Mul", &[&product, &scale], &[])
        } else {
            let weight = self.f32_initializer(&transposed, &weight.t()?.contiguous()?)?;
            self.op("MatMul", &[x, &weight], &[])
        };
        Ok(self.op("Add", &[&product, &bias], &[]))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str) -> Result<String> {
        let scale = self.weight(&format!("{prefix}.weight"))?;
        let bias = self.weight(&format!("{prefix}.bias"))?;
        let epsilon = Attr::Float(self.config().layer_norm_eps as f32);
        Ok(self.op(
            "LayerNormalization",
            &[x, &scale, &bias],
            &[("axis", Attr::Int(-1)), ("epsilon", epsilon)],
        ))
    }

    /// One encoder layer with `heads` attention heads: self-attention with the residual and
    /// layer norm, then the feed-forward block with its own.
    fn encoder_layer(
        &mut self,
        x: &str,
        mask_bias: &str,
        heads: usize,
        prefix: &str,
    ) -> Result<String> {
        let head_dim = self.config().head_dim();
        let split = self.int64s(&[0, 0, heads as i64, head_dim as i64]);
        let project = |graph: &mut Self, name: &str, perm: Vec<i64>| -> Result<String> {
            let projected = graph.linear(x, &format!("{prefix}.attention.self.{name}"))?;
            let by_head = graph.op("Reshape", &[&projected, &split], &[]);
            Ok(graph.op("Transpose", &[&by_head], &[("perm", Attr::Ints(perm))]))
        };
        let query = project(self, "query", vec![0, 2, 1, 3])?;
        // Keys come transposed, `[batch, heads, head_dim, keys]`, ready for the product.
        let key = project(self, "key", vec![0, 2, 3, 1])?;
        let value = project(self, "value", vec![0, 2, 1, 3])?;
        let scores = self.op("MatMul", &[&query, &key], &[]);
        let scale = self.float(1.0 / (head_dim as f32).sqrt());
        let scores = self.op("Mul", &[&scores, &scale], &[]);
        let scores = self.op("Add", &[&scores, mask_bias], &[]);
        let probabilities = self.op("Softmax", &[&scores], &[("axis", Attr::Int(-1))]);
        let context = self.op("MatMul", &[&probabilities, &value], &[]);
        let context = self.op(
            "Transpose",
            &[&context],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let merge = self.int64s(&[0, 0, (heads * head_dim) as i64]);
        let context = self.op("Reshape", &[&context, &merge], &[]);
        let attended = self.linear(&context, &format!("{prefix}.attention.output.dense"))?;
        let residual = self.op("Add", &[&attended, x], &[]);
        let x = self.layer_norm(&residual, &format!("{prefix}.attention.output.LayerNorm"))?;

        let inner = self.linear(&x, &format!("{prefix}.intermediate.dense"))?;
        let inner = self.activation(&inner)?;
        let out = self.linear(&inner, &format!("{prefix}.output.dense"))?;
        let residual = self.op("Add", &[&out, &x], &[]);
        self.layer_norm(&residual, &format!("{prefix}.output.LayerNorm"))
    }

    /// The feed-forward activation of `hidden_act`, from opset-17 ops (Gelu came in 20).
    fn activation(&mut self, x: &str) -> Result<String> {
        let act = self.config().hidden_act.clone();
        let inner = match act.as_str() {
            "relu" => return Ok(self.op("Relu", &[x], &[])),
            "gelu" => return Ok(self.gelu(x)),
            // 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
            "gelu_new" => {
                let three = self.float(3.0);
                let cube = self.op("Pow", &[x, &three], &[]);
                let coefficient = self.float(0.044715);
                let cube = self.op("Mul", &[&cube, &coefficient], &[]);
                let sum = self.op("Add", &[x, &cube], &[]);
                let factor = self.float((2.0 / std::f32::consts::PI).sqrt());
                let scaled = self.op("Mul", &[&sum, &factor], &[]);
                self.op("Tanh", &[&scaled], &[])
            }
            other => bail!("cannot export hidden_act {other:?} to ONNX"),
        };
        Ok(self.gated(x, &inner))
    }

    /// The exact GELU, 0.5 x (1 + erf(x / sqrt 2)).
    fn gelu(&mut self, x: &str) -> String {
        let root2 = self.float(std::f32::consts::SQRT_2);
        let scaled = self.op("Div", &[x, &root2], &[]);
        let inner = self.op("Erf", &[&scaled], &[]);
        self.gated(x, &inner)
    }

    /// 0.5 x (1 + `inner`), the form both GELUs take.
    fn gated(&mut self, x: &str, inner: &str) -> String {
        let half = self.float(0.5);
        let one = self.float(1.0);
        let gate = self.op("Add", &[inner, &one], &[]);
        let gate = self.op("Mul", &[&gate, &half], &[]);
        self.op("Mul", &[x, &gate], &[])
    }

    /// Gives the value `from` (the last node's output) the graph output's name.
    fn rename_output(&mut self, from: &str, to: &str) {
        let last = self.nodes.last_mut().expect("the graph has nodes");
        debug_assert_eq!(last.output[0], from);
        last.output[0] = to.into();
    }
}

/// Refuses what an ONNX export does not do, before anything is written.
pub fn check_options(options: &ExportOptions) -> Result<()> {
    ensure!(
        options.precision == Precision::F32,
        "an ONNX export has f32 (or, with --quantize, int8) weights: --dtype is for safetensors \
         exports"
    );
    ensure!(
        options.prune_vocab.is_empty() && !options.restore_heads,
        "export with --prune-vocab or --restore-heads first, then --format onnx from that \
         directory"
    );
    Ok(())
}
