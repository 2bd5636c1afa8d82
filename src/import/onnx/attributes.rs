//! Node attributes: `Attrs`, typed lookups that name the node and attribute in
//! every error, and reject attributes an op does not define.

use crate::import::proto::{attr_type, AttributeProto};
use crate::import::ImportError;

/// Attribute lookup with typed accessors that report the node on error.
pub(super) struct Attrs<'a> {
    pub(super) list: &'a [AttributeProto],
    pub(super) op: &'a str,
    pub(super) node: &'a str,
}

impl<'a> Attrs<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.list.iter().find(|a| a.name.as_deref() == Some(name))
    }

    pub(super) fn unsupported(&self, attribute: &str, value: impl std::fmt::Debug) -> ImportError {
        ImportError::UnsupportedAttribute {
            op: self.op.into(),
            node: self.node.into(),
            attribute: attribute.into(),
            value: format!("{value:?}"),
        }
    }

    pub(super) fn wrong_type(&self, a: &AttributeProto, want: &str) -> ImportError {
        self.unsupported(
            a.name.as_deref().unwrap_or(""),
            format!("attribute of type {:?}, expected {want}", a.r#type),
        )
    }

    /// Rejects attributes the op does not define (or cnnpack does not know).
    pub(super) fn only(&self, known: &[&str]) -> Result<(), ImportError> {
        for a in self.list {
            let name = a.name.as_deref().unwrap_or("");
            if !known.contains(&name) {
                return Err(self.unsupported(name, "<unknown attribute>"));
            }
        }
        Ok(())
    }

    pub(super) fn int(&self, name: &str) -> Result<Option<i64>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::INT) => Ok(Some(a.i.unwrap_or(0))),
            Some(a) => Err(self.wrong_type(a, "INT")),
        }
    }

    pub(super) fn int_or(&self, name: &str, default: i64) -> Result<i64, ImportError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    pub(super) fn float_or(&self, name: &str, default: f32) -> Result<f32, ImportError> {
        match self.get(name) {
            None => Ok(default),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::FLOAT) => Ok(a.f.unwrap_or(0.0)),
            Some(a) => Err(self.wrong_type(a, "FLOAT")),
        }
    }

    pub(super) fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::INTS) => Ok(Some(a.ints.clone())),
            Some(a) => Err(self.wrong_type(a, "INTS")),
        }
    }

    pub(super) fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::FLOATS) => {
                Ok(Some(a.floats.clone()))
            }
            Some(a) => Err(self.wrong_type(a, "FLOATS")),
        }
    }

    pub(super) fn string(&self, name: &str) -> Result<Option<String>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::STRING) => Ok(Some(
                String::from_utf8_lossy(a.s.as_deref().unwrap_or_default()).into_owned(),
            )),
            Some(a) => Err(self.wrong_type(a, "STRING")),
        }
    }

    /// A non-negative size list of the given length (kernel, strides, dilations).
    pub(super) fn sizes(
        &self,
        name: &str,
        len: usize,
        default: usize,
    ) -> Result<Vec<usize>, ImportError> {
        match self.ints(name)? {
            None => Ok(vec![default; len]),
            Some(v) if v.len() == len && v.iter().all(|&x| (1..1 << 24).contains(&x)) => {
                Ok(v.iter().map(|&x| x as usize).collect())
            }
            Some(v) => Err(self.unsupported(name, v)),
        }
    }
}
