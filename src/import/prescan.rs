//! A pass over the protobuf wire format before decoding.
//!
//! prost decodes eagerly: a small file of empty sub-messages (two bytes each)
//! would become hundreds of bytes of structs apiece, and a 4 GiB file of them a
//! few hundred GiB. This walker estimates what decoding will allocate, and counts
//! the graph's nodes, without allocating anything, so `parse_onnx` can refuse
//! such files first. Malformed wire data just ends the walk: prost reports it.

/// What a decode of `bytes` would allocate, and the graph's node count.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Estimate {
    /// Estimated bytes of decoded structs, strings and vectors.
    pub cost: u64,
    /// `GraphProto.node` entries in the top-level graph.
    pub nodes: u64,
}

/// The message types of the schema in `proto.rs`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    ValueInfo,
    Type,
    TypeTensor,
    Shape,
    Dim,
    Entry,
    OpsetId,
}

/// Rough size of one decoded message struct (the largest, TensorProto, is ~300).
const STRUCT: u64 = 320;
/// Size of an empty `String`/`Vec`.
const VEC: u64 = 24;

/// The sub-message kind of a length-delimited field, if it is one we decode.
fn child(kind: Kind, field: u64) -> Option<Kind> {
    use Kind::*;
    Some(match (kind, field) {
        (Model, 7) => Graph,
        (Model, 8) => OpsetId,
        (Model, 14) => Entry,
        (Graph, 1) => Node,
        (Graph, 5) => Tensor,
        (Graph, 11..=13) => ValueInfo,
        (Node, 5) => Attribute,
        (Attribute, 5 | 10) => Tensor,
        (Tensor, 13) => Entry,
        (ValueInfo, 2) => Type,
        (Type, 1) => TypeTensor,
        (TypeTensor, 2) => Shape,
        (Shape, 1) => Dim,
        _ => return None,
    })
}

/// Fields decoded as a `Vec` of 8-byte numbers from varints (up to 8x growth).
fn varint_vec(kind: Kind, field: u64) -> bool {
    matches!(
        (kind, field),
        (Kind::Tensor, 1 | 5 | 7 | 11) | (Kind::Attribute, 8)
    )
}

/// Fields that prost keeps (strings, bytes, packed numbers); others are skipped.
fn kept(kind: Kind, field: u64) -> bool {
    use Kind::*;
    match kind {
        Model => matches!(field, 2 | 3 | 4 | 6),
        Graph => matches!(field, 2 | 10),
        Node => matches!(field, 1 | 2 | 3 | 4 | 6 | 7),
        Attribute => matches!(field, 1 | 4 | 7 | 8 | 9 | 13 | 21),
        Tensor => matches!(field, 1 | 4 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 12),
        ValueInfo => matches!(field, 1 | 3),
        Type => field == 6,
        TypeTensor => false,
        Shape => false,
        Dim => matches!(field, 2 | 3),
        Entry => matches!(field, 1 | 2),
        OpsetId => field == 1,
    }
}

struct Wire<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Wire<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

/// Walks one message body; `None` on malformed wire data (the estimate so far stands).
fn walk(b: &[u8], kind: Kind, est: &mut Estimate, top_graph: bool) -> Option<()> {
    let mut w = Wire { b, pos: 0 };
    while w.pos < b.len() {
        let key = w.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                w.varint()?;
                // Repeated unpacked numbers each add 8 bytes to a Vec.
                est.cost += 8;
            }
            1 => {
                w.pos = w.pos.checked_add(8).filter(|&p| p <= b.len())?;
                est.cost += 8;
            }
            5 => {
                w.pos = w.pos.checked_add(4).filter(|&p| p <= b.len())?;
                est.cost += 8;
            }
            2 => {
                let len = usize::try_from(w.varint()?).ok()?;
                let end = w.pos.checked_add(len).filter(|&p| p <= b.len())?;
                let body = &b[w.pos..end];
                w.pos = end;
                if let Some(k) = child(kind, field) {
                    est.cost += STRUCT;
                    if top_graph && kind == Kind::Graph && field == 1 {
                        est.nodes += 1;
                    }
                    walk(body, k, est, kind == Kind::Model && field == 7)?;
                } else if varint_vec(kind, field) {
                    est.cost += VEC + 8 * len as u64;
                } else if kept(kind, field) {
                    est.cost += VEC + len as u64;
                }
            }
            _ => return None,
        }
    }
    Some(())
}

/// Estimates the decode of a serialized `ModelProto`.
pub(super) fn estimate(bytes: &[u8]) -> Estimate {
    let mut est = Estimate::default();
    let _ = walk(bytes, Kind::Model, &mut est, false);
    est
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nodes_and_empty_message_blowup() {
        // Model { graph: Graph { node: [{}, {}, {}] } }
        let graph = [0x0a, 0x00, 0x0a, 0x00, 0x0a, 0x00];
        let mut model = vec![0x3a, graph.len() as u8];
        model.extend(graph);
        let e = estimate(&model);
        assert_eq!(e.nodes, 3);
        assert!(e.cost >= 4 * STRUCT, "{e:?}");
        // Truncated: the count up to the damage stands.
        let e = estimate(&model[..5]);
        assert_eq!(e.nodes, 0, "the graph body is cut, so it is not walked");
    }

    #[test]
    fn raw_data_costs_its_length() {
        // Model { graph: Graph { initializer: [Tensor { raw_data: 1000 bytes }] } }
        let mut tensor = vec![0x4a, 0xe8, 0x07];
        tensor.extend(vec![0u8; 1000]);
        let mut graph = vec![0x2a, 0xeb, 0x07];
        graph.extend(tensor);
        let mut model = vec![0x3a, 0xee, 0x07];
        model.extend(graph);
        let e = estimate(&model);
        assert!(e.cost >= 1000 && e.cost < 2000, "{e:?}");
    }
}
