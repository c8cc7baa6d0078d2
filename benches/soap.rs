//! Stage 4 on the hot path: parse an Outbound Message and rewrite its SessionId to nil, as
//! obmguard does for every request. Bodies are Salesforce-shaped: ~5 KB, ~50 KB and the
//! 100-notification maximum. Throughput is in body bytes. Beside each, the floor:
//! quick-xml's bare tokenizer over the same bytes (every event read, nothing checked), so the
//! cost of obmguard's checks and rewrite is parse-and-rewrite minus tokenize.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use obmguard::soap::{parse, rewrite, Limits, SessionRewrite};

/// An Outbound Message with `notifications` Account notifications of `fields` fields each.
fn body(notifications: usize, fields: usize) -> Vec<u8> {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D5e000000AbCdEAK</OrganizationId>
   <ActionId>04k5e000000XyZaAAK</ActionId>
   <SessionId>00D5e000000AbCd!AQ4AQLvSbmEbKkqPz1Ld2cz8fDKE1F4Wtg.TxZqAZ6MflnIaBzB0.tKpQsHYtlqUIZ1mCq</SessionId>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/59.0/00D5e000000AbCd</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/59.0/00D5e000000AbCd</PartnerUrl>
"#,
    );
    for n in 0..notifications {
        s += &format!(
            "   <Notification>\n    <Id>04l5e00000AbC{n:03}</Id>\n    <sObject xsi:type=\"sf:Account\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">\n     <sf:Id>0015e00000QwE{n:03}</sf:Id>\n"
        );
        for f in 0..fields {
            s += &format!(
                "     <sf:Field{f}__c>Value {f} of record {n} &amp; co</sf:Field{f}__c>\n"
            );
        }
        s += "    </sObject>\n   </Notification>\n";
    }
    s += "  </notifications>\n </soapenv:Body>\n</soapenv:Envelope>\n";
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("soap");
    for (name, body) in [
        ("parse_rewrite_nil_5k", body(6, 10)),
        ("parse_rewrite_nil_50k", body(64, 10)),
        ("parse_rewrite_nil_100_notifications", body(100, 10)),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name} ({} bytes)", body.len()), |b| {
            b.iter(|| {
                let msg = parse(black_box(&body), &limits).expect("bench body parses");
                let out = rewrite(&body, &msg, &SessionRewrite::Nil).expect("rewrite");
                black_box(out.len())
            })
        });
        group.bench_function(format!("{name}: quick-xml tokenize only"), |b| {
            b.iter(|| {
                let mut reader = quick_xml::Reader::from_reader(black_box(body.as_slice()));
                let mut events = 0usize;
                loop {
                    match reader.read_event() {
                        Ok(quick_xml::events::Event::Eof) => break,
                        Ok(_) => events += 1,
                        Err(e) => panic!("bench body does not tokenize: {e}"),
                    }
                }
                black_box(events)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
