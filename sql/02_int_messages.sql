-- creates: int_messages (one row per stg_messages row: typed, normalized, PII-masked, with filter_reason)
-- reads:   stg_messages
-- params:  {{min_chars}} {{max_chars}}
-- filter_reason is null for rows that pass; otherwise the first rule the row fails.
create or replace table int_messages as
with source as (
    select * from stg_messages
),

normalized as (
    select
        source_row_id,
        source_file,
        trim(message_id) as message_id,
        trim(customer_id) as customer_id,
        trim(created_at) as created_at_raw,
        -- ISO 8601 local time only (YYYY-MM-DD[ HH:MM[:SS[.ffffff]]]), the formats on which DuckDB and Spark agree
        case
            when regexp_matches(trim(created_at), '^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T]([01][0-9]|2[0-3]):[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?)?$')
                then try_cast(trim(created_at) as timestamp)
        end as created_at,
        lower(trim(channel)) as channel,
        lower(trim(region)) as region,
        trim(age_band) as age_band,
        -- NFC, then every run of whitespace (newlines, tabs, doubled spaces) becomes one space; the
        -- pattern leaves single spaces alone (matching them too costs 3x the CPU for the same result)
        trim(regexp_replace(nfc_normalize(coalesce(text, '')), '\s{2,}|[^\S ]', ' ', 'g')) as text_ws,
        lower(trim(coalesce(intent, ''))) as intent,
        trim(regexp_replace(nfc_normalize(coalesce(reply, '')), '\s{2,}|[^\S ]', ' ', 'g')) as reply
    from source
),

masked as (
    -- PII: card-like numbers before phone numbers (a card contains phone-shaped digit runs)
    select
        *,
        regexp_replace(
            regexp_replace(
                regexp_replace(text_ws, '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}', '<EMAIL>', 'g'),
                '\b(?:\d[ -]?){12,18}\d\b', '<CARD>', 'g'),
            '(?:\+?\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}\b', '<PHONE>', 'g') as text
    from normalized
),

checked as (
    select
        *,
        case
            when text = '' then 'empty text'
            when length(text) < {{min_chars}} then 'text shorter than ' || cast({{min_chars}} as varchar) || ' chars'
            when length(text) > {{max_chars}} then 'text longer than ' || cast({{max_chars}} as varchar) || ' chars'
            when intent = '' then 'missing intent'
            when intent not in ('billing', 'refund', 'shipping', 'technical_issue', 'account_access', 'cancellation')
                then 'unknown intent: ' || intent
            when created_at is null then 'unparseable created_at: ' || coalesce(created_at_raw, 'null')
        end as filter_reason
    from masked
)

select
    source_row_id,
    source_file,
    message_id,
    customer_id,
    created_at,
    channel,
    region,
    age_band,
    text,
    lower(text) as text_norm,
    intent,
    reply,
    filter_reason
from checked
