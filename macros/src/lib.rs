//! Procedural macros for [casstack](https://docs.rs/casstack): `layout!` turns a TOML layout
//! into the matching store type at build time. Use it through `casstack::layout!` (feature
//! `macros`); the same TOML gives the parameters at run time through `FromSpec`.
//!
//! The pipeline follows serde_derive: parse the TOML with spans, check the shape against the
//! model of known stores, expand to a type; every error is one compile error naming the line
//! and column in the TOML.
#![forbid(unsafe_code)]

mod model;
mod parse;

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{Ident, LitStr, Token, Visibility};

/// `layout!(pub type Cas = "layouts/prod.toml");` reads the file relative to the calling
/// crate's `Cargo.toml` and expands to `pub type Cas = ::casstack::FastSlow<..>;`.
/// `layout!(type Dev = inline "memory = {}");` takes the TOML text itself.
#[proc_macro]
pub fn layout(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as LayoutInput);
    expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

struct LayoutInput {
    vis: Visibility,
    name: Ident,
    inline: bool,
    source: LitStr,
}

impl Parse for LayoutInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let vis = input.parse()?;
        input.parse::<Token![type]>()?;
        let name = input.parse()?;
        input.parse::<Token![=]>()?;
        let inline = if input.peek(Ident) {
            let word: Ident = input.parse()?;
            if word != "inline" {
                return Err(syn::Error::new(
                    word.span(),
                    "expected a layout file path or `inline \"<toml>\"`",
                ));
            }
            true
        } else {
            false
        };
        let source = input.parse()?;
        input.parse::<Option<Token![;]>>()?;
        Ok(LayoutInput {
            vis,
            name,
            inline,
            source,
        })
    }
}

fn expand(input: LayoutInput) -> syn::Result<proc_macro2::TokenStream> {
    let span = input.source.span();
    let (text, origin, tracker) = if input.inline {
        (input.source.value(), "inline layout".to_string(), quote!())
    } else {
        let relative = input.source.value();
        let dir = std::env::var("CARGO_MANIFEST_DIR").map_err(|_| {
            syn::Error::new(span, "CARGO_MANIFEST_DIR is not set; build with cargo")
        })?;
        let path = std::path::Path::new(&dir).join(&relative);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            syn::Error::new(
                span,
                // The path as written, and what it is relative to: the absolute path would
                // make the message depend on where the crate is checked out.
                format!(
                    "cannot read layout `{relative}` (paths are relative to the crate's \
                     Cargo.toml, CARGO_MANIFEST_DIR): {e}"
                ),
            )
        })?;
        let path_lit = LitStr::new(&path.to_string_lossy(), span);
        // Makes cargo rebuild the crate when the layout file changes.
        let tracker = quote!(
            const _: &str = ::core::include_str!(#path_lit);
        );
        (text, format!("layout `{relative}`"), tracker)
    };
    let node = parse::parse(&text).map_err(|e| {
        syn::Error::new(
            span,
            format!(
                "{origin}, line {}, column {}: {}",
                e.line, e.column, e.message
            ),
        )
    })?;
    let ty: syn::Type = syn::parse_str(&format!("::casstack::{}", qualified(&node)))
        .map_err(|e| syn::Error::new(Span::call_site(), format!("internal: {e}")))?;
    let LayoutInput { vis, name, .. } = input;
    Ok(quote! {
        #vis type #name = #ty;
        #tracker
    })
}

/// The node's type with every nested type also under `::casstack::`.
fn qualified(node: &parse::Node) -> String {
    if node.children.is_empty() || node.kind.children == model::Children::Inline {
        return node.kind.type_name.to_string();
    }
    let children: Vec<String> = node
        .children
        .iter()
        .map(|c| format!("::casstack::{}", qualified(c)))
        .collect();
    format!("{}<{}>", node.kind.type_name, children.join(", "))
}
