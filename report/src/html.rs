//! The report's page: plain HTML with its figures, plots and gallery (no scripts).

use std::fmt::Write as _;

use crate::ReportSummary;
use crate::data::{GalleryItem, RoundData};

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1500px}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.8em}table{border-collapse:collapse;font-size:.9em}\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}\
td.l,th.l{text-align:left}.plots img{width:720px;max-width:48%;margin:.3em;border:1px solid #ddd}\
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:.8em}\
.card{border:1px solid #ddd;border-radius:6px;padding:.5em;font-size:.82em}\
.card img{display:block;margin:0 auto .4em;max-width:160px;max-height:160px}\
.t{margin:.15em 0}.kept{color:#176b2c}.dropped{color:#a22;text-decoration:line-through}\
.badge{font-size:.75em;padding:0 .4em;border-radius:.6em;background:#eee;margin-right:.3em}\
.muted{color:#777}.noimg{height:80px;display:flex;align-items:center;justify-content:center;background:#f6f6f6;color:#a22}";

/// `n / d` as a percentage with one decimal, `–` when `d` is 0.
fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "–".into()
    } else {
        format!("{:.1}%", 100.0 * n as f64 / d as f64)
    }
}

/// `kept / judged (share)`, as the totals and rounds tables show kept texts.
pub fn kept_of(kept: u64, judged: u64) -> String {
    format!("{kept} / {judged} ({})", pct(kept, judged))
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Renders `index.html`.
pub fn render(data: &RoundData, summary: &ReportSummary, by_reason: &[(String, u64)]) -> String {
    let m = &data.manifest;
    let t = &m.totals;
    let p = &m.params;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>capfilt round {r} report</title>\
         <style>{STYLE}</style></head><body><h1>CapFilt round {r}</h1>\
         <p class=muted>input {input} · {shards} shards · written from the round's commit records</p>",
        r = m.round,
        input = escape(&m.input_url),
        shards = m.shards.len(),
    );
    let quarantined = m.shards.iter().filter(|s| s.commit.is_none()).count();
    let _ = write!(
        h,
        "<h2>Totals</h2><table id=totals><tr><th>rows in</th><th>scored</th><th>rejected</th>\
         <th>web kept</th><th>synthetic kept</th><th>quarantined shards</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td id=web-kept>{}</td>\
         <td id=synthetic-kept>{}</td><td>{}</td></tr></table>",
        t.rows_in,
        t.rows_scored,
        t.rows_rejected,
        kept_of(t.web_kept, t.web_texts),
        kept_of(t.synthetic_kept, t.synthetic_texts),
        quarantined
    );
    let _ = write!(
        h,
        "<h2>Models and parameters</h2><table><tr><th class=l>captioner</th><td class=l>{} \
         <span class=muted>sha256 {}</span></td></tr><tr><th class=l>filter</th><td class=l>{} \
         <span class=muted>sha256 {}</span></td></tr><tr><th class=l>decoding</th><td class=l>{} \
         (top_p {}, temperature {}, beams {}, repetition penalty {}, length {}–{}, {} candidates, prompt \"{}\")</td></tr>\
         <tr><th class=l>threshold</th><td class=l>{}</td></tr></table>",
        escape(&m.captioner.url),
        escape(short(&m.captioner.bundle_json_sha256)),
        escape(&m.filter.url),
        escape(short(&m.filter.bundle_json_sha256)),
        escape(&p.decoding),
        p.top_p,
        p.temperature,
        p.num_beams,
        p.repetition_penalty,
        p.min_length,
        p.max_length,
        p.candidates,
        escape(&p.prompt),
        p.threshold
    );
    if let Some(f) = &summary.truth {
        let _ = write!(
            h,
            "<h2>Against the ground truth</h2><table id=truth><tr><th>web texts</th>\
             <th>raw web precision</th><th>kept web precision</th><th>kept web recall</th></tr>\
             <tr><td>{}</td><td>{:.3}</td><td id=kept-precision>{:.3}</td><td id=kept-recall>{:.3}</td></tr></table>",
            f.web_texts, f.raw_precision, f.kept_precision, f.kept_recall
        );
    }
    h.push_str("<h2>Plots</h2><div class=plots>");
    let mut plots = vec![
        ("itm_histogram", "ITM probability histograms"),
        ("keep_rates", "keep rates per shard"),
        ("throughput", "throughput per worker"),
        ("rejects", "rejects by reason"),
    ];
    if summary.truth.is_some() {
        plots.push((
            "precision_recall",
            "precision and recall against the threshold",
        ));
    }
    for (name, alt) in plots {
        let _ = write!(h, "<img class=plot src=\"plots/{name}.png\" alt=\"{alt}\">");
    }
    h.push_str("</div>");
    if !by_reason.is_empty() {
        h.push_str("<table id=rejects><tr><th class=l>reject reason</th><th>rows</th></tr>");
        for (r, n) in by_reason {
            let _ = write!(h, "<tr><td class=l>{}</td><td>{n}</td></tr>", escape(r));
        }
        h.push_str("</table>");
    }
    let _ = write!(
        h,
        "<h2>Sample</h2><p class=muted>{} images drawn at random (seeded: the same round draws the \
         same images), with every text the filter judged: <span class=kept>kept</span>, \
         <span class=dropped>dropped</span>.</p><div class=gallery id=sample>",
        data.sample.len()
    );
    for item in &data.sample {
        card(&mut h, item);
    }
    let _ = write!(
        h,
        "</div><h2>Most confident rejections</h2><p class=muted>The {} web texts the filter \
         dropped with the lowest ITM probability.</p><div class=gallery id=rejections>",
        data.rejections.len()
    );
    for item in &data.rejections {
        card(&mut h, item);
    }
    h.push_str("</div></body></html>");
    h
}

fn card(h: &mut String, item: &GalleryItem) {
    h.push_str("<div class=card>");
    match (&item.thumbnail, &item.thumbnail_error) {
        (Some(src), _) => {
            let _ = write!(
                h,
                "<img class=thumb src=\"{}\" alt=\"{}\">",
                escape(src),
                escape(&item.key)
            );
        }
        (None, e) => {
            let _ = write!(
                h,
                "<div class=noimg>no image: {}</div>",
                escape(e.as_deref().unwrap_or("unknown"))
            );
        }
    }
    let _ = write!(h, "<div class=muted>{}</div>", escape(&item.key));
    for t in &item.texts {
        let _ = write!(
            h,
            "<p class=t><span class=badge>{} {:.3}</span><span class={}>{}</span></p>",
            escape(&t.origin),
            t.itm_prob,
            if t.kept { "kept" } else { "dropped" },
            escape(&t.text)
        );
    }
    h.push_str("</div>");
}
