//! PD member commands: members, add-member, remove-member. They talk to the
//! PD members directly (no region lookups), so `pd members` also works while
//! the members have no leader: it prints the view of the first member that
//! answers.

use std::time::{Duration, Instant};

use rdb_client::ClientTls;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::{
    AddMemberRequest, GetMembersRequest, GetMembersResponse, PdMember, RemoveMemberRequest,
};
use serde_json::{json, Value as Json};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::output::*;

/// Where and how to reach the PD members.
pub struct Pd {
    /// The addresses given with --pd.
    pub endpoints: Vec<String>,
    /// TLS, if any.
    pub tls: Option<ClientTls>,
    /// Time budget.
    pub timeout: Duration,
}

impl Pd {
    fn client(&self, addr: &str) -> Result<PdClient<Channel>, Failure> {
        let ch = rdb_proto::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| Failure(2, format!("--pd {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(PdClient::new(ch))
    }

    /// Calls `f` on each member in turn until one answers other than
    /// UNAVAILABLE (unreachable, or no leader yet), within the time budget.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Failure>
    where
        F: Fn(PdClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            for addr in &self.endpoints {
                match f(self.client(addr)?).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s)
                        if matches!(
                            s.code(),
                            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
                        ) =>
                    {
                        last = format!("{addr}: {}", s.message());
                    }
                    Err(s) => {
                        let code = match s.code() {
                            Code::InvalidArgument => 2,
                            Code::NotFound => EXIT_NOT_FOUND,
                            _ => EXIT_OTHER,
                        };
                        return Err(Failure(code, s.message().to_string()));
                    }
                }
            }
            if started.elapsed() >= self.timeout {
                return Err(Failure(
                    EXIT_UNREACHABLE,
                    format!("no PD member could answer (last: {last})"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn member_json(m: &PdMember) -> Json {
    json!({
        "id": m.id,
        "name": m.name,
        "address": m.address,
        "role": if m.is_learner { "learner" } else { "voter" },
        "leader": m.is_leader,
        "matched_index": m.matched_index,
    })
}

fn members_text(members: &[PdMember]) -> String {
    let mut t = format!(
        "{:<6} {:<12} {:<24} {:<8} {:<7} MATCHED",
        "ID", "NAME", "ADDRESS", "ROLE", "LEADER"
    );
    for m in members {
        t.push_str(&format!(
            "\n{:<6} {:<12} {:<24} {:<8} {:<7} {}",
            m.id,
            m.name,
            m.address,
            if m.is_learner { "learner" } else { "voter" },
            if m.is_leader { "*" } else { "" },
            m.matched_index
        ));
    }
    t
}

/// Lists the members as the leader sees them (or, without a leader, as the
/// first member that answers sees them).
pub async fn members(pd: &Pd, out: &Out) -> Result<(), Failure> {
    let mut r: GetMembersResponse = pd
        .call(|mut c| async move { c.get_members(GetMembersRequest {}).await })
        .await?;
    if r.leader_id != r.answered_by && !r.leader_address.is_empty() {
        // The leader's view has the replication progress; the first answer
        // stands if the leader does not answer.
        if let Ok(leader) = pd
            .client(&r.leader_address)?
            .get_members(GetMembersRequest {})
            .await
        {
            r = leader.into_inner();
        }
    }
    out.print(
        json!({
            "members": r.members.iter().map(member_json).collect::<Vec<_>>(),
            "leader_id": r.leader_id,
            "leader_address": r.leader_address,
            "answered_by": r.answered_by,
            "cluster_id": r.cluster_id,
            "term": r.term,
            "last_log_index": r.last_log_index,
            "applied_index": r.applied_index,
        }),
        || {
            format!(
                "{}\n(answered by member {}, term {}, cluster {}; MATCHED is known to the leader only)",
                members_text(&r.members),
                r.answered_by,
                r.term,
                r.cluster_id
            )
        },
    );
    Ok(())
}

/// Adds a member; prints how to start it.
pub async fn add_member(pd: &Pd, out: &Out, name: String, address: String) -> Result<(), Failure> {
    let req = AddMemberRequest { name, address };
    let r = pd
        .call(|mut c| {
            let req = req.clone();
            async move { c.add_member(req).await }
        })
        .await?;
    let m = r.member.unwrap_or_default();
    out.print(
        json!({"member": member_json(&m), "initial_cluster": r.initial_cluster}),
        || {
            format!(
                "added {} (id {}) at {} as a learner; it becomes a voter once it has caught up.\n\
                 Start it with:\n  rdb-pd --name {} --listen {} --data-dir DIR \
                 --initial-cluster-state existing --initial-cluster {}",
                m.name, m.id, m.address, m.name, m.address, r.initial_cluster
            )
        },
    );
    Ok(())
}

/// Removes a member by name.
pub async fn remove_member(pd: &Pd, out: &Out, name: String) -> Result<(), Failure> {
    let req = RemoveMemberRequest { name: name.clone() };
    let r = pd
        .call(|mut c| {
            let req = req.clone();
            async move { c.remove_member(req).await }
        })
        .await?;
    out.print(
        json!({"removed": name, "members": r.members.iter().map(member_json).collect::<Vec<_>>()}),
        || format!("removed {name}\n{}", members_text(&r.members)),
    );
    Ok(())
}
