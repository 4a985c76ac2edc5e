//! The persistence gRPC service: validation and translation around [`Store`].

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use worldmesh_protocol::grpc::persistence::{self as pb, persistence_server::Persistence};
use worldmesh_protocol::validate_name;

use worldmesh_economy::wire::{self, Malformed};
use worldmesh_economy::{AbortReason, ChangeId, Outcome, TradeId};

use crate::Error;
use crate::store::{Character, Store};

/// Characters per checkpoint batch: a zone's full checkpoint at its default capacity, with
/// room to spare; bigger batches are split by the caller.
pub const MAX_BATCH: usize = 10_000;

/// Acks a checkpoint stream may have in flight towards its zone.
const CHECKPOINT_ACK_QUEUE: usize = 64;

pub struct PersistenceService {
    store: Store,
}

impl PersistenceService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// Backend failures are `UNAVAILABLE` (retryable) and a full backlog `RESOURCE_EXHAUSTED`
/// (retry later); the detail goes to the log, not the caller.
fn status(e: Error) -> Status {
    if let Error::Backlog(why) = &e {
        tracing::warn!(%why, "checkpoint refused: SQL is behind");
        metrics::counter!("worldmesh_persistence_backlog_refusals_total").increment(1);
        return Status::resource_exhausted("checkpoint backlog full; retry later");
    }
    tracing::error!(error = %e, "persistence backend error");
    metrics::counter!("worldmesh_persistence_backend_errors_total").increment(1);
    Status::unavailable("persistence backend unavailable")
}

/// A malformed ledger request: `INVALID_ARGUMENT`, counted, nothing stored.
fn malformed(m: Malformed) -> Status {
    metrics::counter!("worldmesh_persistence_ledger_malformed_total").increment(1);
    Status::invalid_argument(m.to_string())
}

/// A batch of events as publishers must send it: at most
/// [`worldmesh_runtime::events::MAX_BATCH`], each with a kind, names and gateways of at most 64
/// bytes (a character's name is at most 32).
fn check_events(events: &[pb::Event]) -> Result<(), &'static str> {
    use pb::event::Kind;
    if events.len() > worldmesh_runtime::events::MAX_BATCH {
        return Err("too many events");
    }
    for e in events {
        let names: [&str; 2] = match &e.kind {
            None => return Err("an event without a kind"),
            Some(Kind::Online(o)) => [&o.name, &o.gateway],
            Some(Kind::Offline(o)) => [&o.gateway, ""],
            Some(Kind::Scored(s)) => [&s.name, ""],
            Some(Kind::Entered(_) | Kind::Killed(_) | Kind::Traded(_)) => ["", ""],
        };
        if names.iter().any(|n| n.len() > 64) {
            return Err("a name longer than 64 bytes");
        }
    }
    Ok(())
}

/// Counts a ledger answer by request kind and outcome.
fn ledger_outcome(kind: &'static str, outcome: Outcome) {
    let outcome = outcome.name();
    metrics::counter!("worldmesh_persistence_ledger_requests_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

pub fn to_pb(c: Character) -> pb::Character {
    pb::Character {
        id: c.id,
        name: c.name,
        x: c.x,
        y: c.y,
        heading: c.heading,
        epoch: c.epoch,
        version: c.version,
        game: c.game,
    }
}

pub fn from_pb(c: pb::Character) -> Character {
    Character {
        id: c.id,
        name: c.name,
        x: c.x,
        y: c.y,
        heading: c.heading,
        epoch: c.epoch,
        version: c.version,
        game: c.game,
    }
}

#[tonic::async_trait]
impl Persistence for PersistenceService {
    async fn load_or_create_character(
        &self,
        req: Request<pb::LoadOrCreateCharacterRequest>,
    ) -> Result<Response<pb::CharacterReply>, Status> {
        let req = req.into_inner();
        if !validate_name(&req.name) {
            return Err(Status::invalid_argument("invalid character name"));
        }
        if !req.spawn_x.is_finite() || !req.spawn_y.is_finite() {
            return Err(Status::invalid_argument("spawn position must be finite"));
        }
        let (character, created) = self
            .store
            .load_or_create(&req.name, (req.spawn_x, req.spawn_y))
            .await
            .map_err(status)?;
        if created {
            tracing::info!(character = character.id, name = %character.name, "character created");
        }
        Ok(Response::new(pb::CharacterReply {
            character: Some(to_pb(character)),
            created,
        }))
    }

    async fn load_character(
        &self,
        req: Request<pb::LoadCharacterRequest>,
    ) -> Result<Response<pb::CharacterReply>, Status> {
        let id = req.into_inner().id;
        match self.store.load(id).await.map_err(status)? {
            Some(c) => Ok(Response::new(pb::CharacterReply {
                character: Some(to_pb(c)),
                created: false,
            })),
            None => Err(Status::not_found(format!("no character {id}"))),
        }
    }

    async fn save_characters(
        &self,
        req: Request<pb::SaveCharactersRequest>,
    ) -> Result<Response<pb::SaveCharactersReply>, Status> {
        let batch = validate_batch(req.into_inner().characters)?;
        let rejected = self.store.save(&batch).await.map_err(status)?;
        Ok(Response::new(pb::SaveCharactersReply { rejected }))
    }

    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginReply>, Status> {
        use crate::accounts::{Proof, Refusal};
        use pb::login_request::Auth;
        let req = req.into_inner();
        if !validate_name(&req.name) {
            return Err(Status::invalid_argument("invalid account name"));
        }
        if !req.spawn_x.is_finite() || !req.spawn_y.is_finite() {
            return Err(Status::invalid_argument("spawn position must be finite"));
        }
        let proof = match req.auth {
            None => return Err(Status::invalid_argument("no proof of identity")),
            Some(Auth::Password(p)) => Proof::Password(p),
            Some(Auth::RegisterPassword(p)) => Proof::Register(p),
            Some(Auth::Token(t)) => Proof::Token {
                account_id: t.account_id,
                generation: t.generation,
            },
            Some(Auth::Guest(_)) => Proof::Guest,
        };
        let kind = match &proof {
            Proof::Password(_) => "password",
            Proof::Register(_) => "register",
            Proof::Token { .. } => "token",
            Proof::Guest => "guest",
        };
        let outcome = self
            .store
            .login(&req.name, proof, (req.spawn_x, req.spawn_y))
            .await
            .map_err(status)?;
        let reply = match outcome {
            Ok(l) => {
                metrics::counter!("worldmesh_persistence_logins_total", "proof" => kind, "outcome" => "ok").increment(1);
                if l.created {
                    tracing::info!(character = l.character.id, name = %req.name, account = l.account_id, "character created");
                }
                pb::LoginReply {
                    outcome: pb::LoginOutcome::LoginOk as i32,
                    character: Some(to_pb(l.character)),
                    account_id: l.account_id,
                    token_generation: l.token_generation,
                    created: l.created,
                }
            }
            Err(refusal) => {
                let outcome = match refusal {
                    Refusal::UnknownAccount => pb::LoginOutcome::LoginUnknownAccount,
                    Refusal::WrongPassword => pb::LoginOutcome::LoginWrongPassword,
                    Refusal::NameTaken => pb::LoginOutcome::LoginNameTaken,
                    Refusal::TokenRevoked => pb::LoginOutcome::LoginTokenRevoked,
                    Refusal::AccountRequired => pb::LoginOutcome::LoginAccountRequired,
                    Refusal::InvalidPassword => pb::LoginOutcome::LoginInvalidPassword,
                };
                metrics::counter!("worldmesh_persistence_logins_total", "proof" => kind, "outcome" => outcome.as_str_name()).increment(1);
                tracing::info!(name = %req.name, proof = kind, %refusal, "login refused");
                pb::LoginReply {
                    outcome: outcome as i32,
                    ..Default::default()
                }
            }
        };
        Ok(Response::new(reply))
    }

    async fn revoke_tokens(
        &self,
        req: Request<pb::RevokeTokensRequest>,
    ) -> Result<Response<pb::RevokeTokensReply>, Status> {
        let name = req.into_inner().name;
        if !validate_name(&name) {
            return Err(Status::invalid_argument("invalid account name"));
        }
        let generation = self.store.revoke_tokens(&name).await.map_err(status)?;
        Ok(Response::new(pb::RevokeTokensReply {
            found: generation.is_some(),
            token_generation: generation.unwrap_or(0),
        }))
    }

    async fn reserve_ids(
        &self,
        req: Request<pb::ReserveIdsRequest>,
    ) -> Result<Response<pb::ReserveIdsReply>, Status> {
        let count = req.into_inner().count;
        if count == 0 || count > crate::ledger::MAX_ID_BLOCK {
            return Err(malformed(Malformed("id block size")));
        }
        let first = self
            .store
            .ledger()
            .reserve_ids(count)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReserveIdsReply { first, count }))
    }

    async fn claim_inventory(
        &self,
        req: Request<pb::ClaimInventoryRequest>,
    ) -> Result<Response<pb::InventoryReply>, Status> {
        let req = req.into_inner();
        let claimed = self
            .store
            .ledger()
            .claim(req.character, req.epoch)
            .await
            .map_err(status)?;
        Ok(Response::new(match claimed {
            Ok(inventory) => wire::inventory_to_pb(&inventory),
            Err(_) => {
                tracing::warn!(
                    character = req.character,
                    epoch = req.epoch,
                    "inventory claim fenced: a later claim is in force"
                );
                ledger_outcome("claim", Outcome::Aborted(AbortReason::Fenced));
                pb::InventoryReply {
                    fenced: true,
                    ..Default::default()
                }
            }
        }))
    }

    async fn change_inventory(
        &self,
        req: Request<pb::ChangeInventoryRequest>,
    ) -> Result<Response<pb::LedgerReply>, Status> {
        let req = req.into_inner();
        let steps = wire::steps_from_pb(&req.steps).map_err(malformed)?;
        let outcome = self
            .store
            .ledger()
            .change(ChangeId(req.id), req.character, req.epoch, &steps)
            .await
            .map_err(status)?;
        ledger_outcome("change", outcome);
        Ok(Response::new(wire::outcome_to_pb(outcome)))
    }

    async fn commit_trade(
        &self,
        req: Request<pb::CommitTradeRequest>,
    ) -> Result<Response<pb::LedgerReply>, Status> {
        let commit = wire::commit_from_pb(&req.into_inner()).map_err(malformed)?;
        let outcome = self.store.ledger().commit(&commit).await.map_err(status)?;
        ledger_outcome("trade", outcome);
        Ok(Response::new(wire::outcome_to_pb(outcome)))
    }

    async fn abort_trade(
        &self,
        req: Request<pb::AbortTradeRequest>,
    ) -> Result<Response<pb::LedgerReply>, Status> {
        let req = req.into_inner();
        let why = wire::reason_from_code(req.reason).map_err(malformed)?;
        let outcome = self
            .store
            .ledger()
            .abort(TradeId(req.id), why)
            .await
            .map_err(status)?;
        ledger_outcome("abort", outcome);
        Ok(Response::new(wire::outcome_to_pb(outcome)))
    }

    async fn ledger_outcome(
        &self,
        req: Request<pb::LedgerOutcomeRequest>,
    ) -> Result<Response<pb::LedgerReply>, Status> {
        let id = req.into_inner().id;
        let outcome = self.store.ledger().outcome(id).await.map_err(status)?;
        Ok(Response::new(match outcome {
            Some(o) => wire::outcome_to_pb(o),
            None => pb::LedgerReply::default(),
        }))
    }

    async fn ground_items(
        &self,
        req: Request<pb::GroundItemsRequest>,
    ) -> Result<Response<pb::GroundItemsReply>, Status> {
        let r = req.into_inner();
        let rect = [r.x0, r.y0, r.x1, r.y1];
        if !rect.iter().all(|c| c.is_finite()) {
            return Err(malformed(Malformed("rectangle")));
        }
        let items = self
            .store
            .ledger()
            .ground_items(rect)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GroundItemsReply {
            items: items
                .iter()
                .map(|(i, [x, y])| pb::GroundItem {
                    item: Some(wire::item_to_pb(i)),
                    x: *x,
                    y: *y,
                })
                .collect(),
        }))
    }

    async fn publish_events(
        &self,
        req: Request<pb::PublishEventsRequest>,
    ) -> Result<Response<pb::PublishEventsReply>, Status> {
        let r = req.into_inner();
        if let Err(why) = check_events(&r.events) {
            metrics::counter!("worldmesh_persistence_events_malformed_total").increment(1);
            return Err(Status::invalid_argument(why));
        }
        self.store
            .events()
            .append(&r.events)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PublishEventsReply {}))
    }

    type CheckpointStream =
        Pin<Box<dyn Stream<Item = Result<pb::CheckpointAck, Status>> + Send + 'static>>;

    async fn checkpoint(
        &self,
        req: Request<Streaming<pb::CheckpointBatch>>,
    ) -> Result<Response<Self::CheckpointStream>, Status> {
        let mut inbound = req.into_inner();
        let store = self.store.clone();
        // Acks queued towards the zone; a zone that stops reading stops being served.
        let (tx, rx) = tokio::sync::mpsc::channel(CHECKPOINT_ACK_QUEUE);
        tokio::spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "checkpoint stream ended");
                        return;
                    }
                };
                let ack = match validate_batch(batch.characters) {
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Ok(chars) => match store.save(&chars).await {
                        Ok(rejected) => pb::CheckpointAck {
                            batch_id: batch.batch_id,
                            rejected,
                            error: String::new(),
                            backlog_full: false,
                        },
                        Err(e) => {
                            let backlog_full = matches!(e, Error::Backlog(_));
                            let error = status(e).message().to_owned();
                            pb::CheckpointAck {
                                batch_id: batch.batch_id,
                                rejected: Vec::new(),
                                error,
                                backlog_full,
                            }
                        }
                    },
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Checks a batch from the wire: size, names, finite positions.
fn validate_batch(characters: Vec<pb::Character>) -> Result<Vec<Character>, Status> {
    if characters.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_BATCH} characters per batch"
        )));
    }
    let batch: Vec<Character> = characters.into_iter().map(from_pb).collect();
    if batch.iter().any(|c| !validate_name(&c.name)) {
        return Err(Status::invalid_argument("invalid character name in batch"));
    }
    if batch
        .iter()
        .any(|c| !(c.x.is_finite() && c.y.is_finite() && c.heading.is_finite()))
    {
        return Err(Status::invalid_argument(
            "character positions must be finite",
        ));
    }
    Ok(batch)
}
