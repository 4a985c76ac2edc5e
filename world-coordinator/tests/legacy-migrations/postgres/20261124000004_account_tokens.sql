-- Session tokens are verified by gateways without a database call; revoking them bumps the
-- account's generation, and a token carrying an older generation is refused at character
-- load (which a login needs anyway).
ALTER TABLE accounts ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;
-- One character per account for now, named like it.
CREATE INDEX characters_owner ON characters (owner);
