-- creates: int_messages (view; one row per stg_messages row: typed, normalized, PII-masked, with filter_reason)
--          over int_messages_data (the same rows and columns less text_norm)
-- reads:   stg_messages
-- params:  {{min_chars}} {{max_chars}}
-- filter_reason is null for rows that pass; otherwise the first rule the row fails.
-- text_norm = lower(text) is computed by the view, not stored: writing it as Parquet cost more (0.4
-- CPU s per million rows) than lowering text where it is read (0.1).
create or replace table int_messages_data as
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
        nfc_normalize(coalesce(text, '')) as text_nfc,
        lower(trim(coalesce(intent, ''))) as intent,
        nfc_normalize(coalesce(reply, '')) as reply_nfc
    from source
),

unicode_spaces as (
    -- the characters trim() removes (Unicode category Zs), to test a value's first and last character
    select chr(32) || chr(160) || chr(5760) || chr(8192) || chr(8193) || chr(8194) || chr(8195) || chr(8196) || chr(8197) || chr(8198) || chr(8199) || chr(8200) || chr(8201) || chr(8202) || chr(8239) || chr(8287) || chr(12288) as zs
),

spaced as (
    -- every run of whitespace (newlines, tabs, doubled spaces) becomes one space, then trim. The regex
    -- runs only on values that hold such a run (two spaces or a \t \n \f \r: exactly the values it
    -- changes), trim only on values that start or end with a space: most values need neither, and
    -- these tests cost a fraction of the regex scan and of trim's copy. The pattern leaves single
    -- spaces alone (matching them too costs 3x the CPU for the same result).
    select
        n.*,
        case
            when strpos(n.text_nfc, '  ') > 0 or strpos(n.text_nfc, chr(10)) > 0 or strpos(n.text_nfc, chr(13)) > 0
                or strpos(n.text_nfc, chr(9)) > 0 or strpos(n.text_nfc, chr(12)) > 0
                then trim(regexp_replace(n.text_nfc, '\s{2,}|[^\S ]', ' ', 'g'))
            when strpos(u.zs, substr(n.text_nfc, 1, 1)) > 0 or strpos(u.zs, substr(n.text_nfc, -1, 1)) > 0
                then trim(n.text_nfc)
            else n.text_nfc
        end as text_ws,
        case
            when strpos(n.reply_nfc, '  ') > 0 or strpos(n.reply_nfc, chr(10)) > 0 or strpos(n.reply_nfc, chr(13)) > 0
                or strpos(n.reply_nfc, chr(9)) > 0 or strpos(n.reply_nfc, chr(12)) > 0
                then trim(regexp_replace(n.reply_nfc, '\s{2,}|[^\S ]', ' ', 'g'))
            when strpos(u.zs, substr(n.reply_nfc, 1, 1)) > 0 or strpos(u.zs, substr(n.reply_nfc, -1, 1)) > 0
                then trim(n.reply_nfc)
            else n.reply_nfc
        end as reply
    from normalized n
    cross join unicode_spaces u
),

emails_masked as (
    -- an email holds an @: texts without one skip the regex
    select
        *,
        case
            when strpos(text_ws, '@') > 0
                then regexp_replace(text_ws, '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}', '<EMAIL>', 'g')
            else text_ws
        end as text_e
    from spaced
),

masked as (
    -- PII: card-like numbers before phone numbers (a card contains phone-shaped digit runs). One
    -- regex test first: every card or phone match contains a match of it (the patterns without
    -- their word boundaries and optional prefix), and masking a card cannot create a phone number
    -- ('<CARD>' holds no digit or separator), so texts failing it are left as they are, exactly
    select
        *,
        case
            when regexp_matches(text_e, '(?:\d[ -]?){12,18}\d|\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}')
                then regexp_replace(
                    regexp_replace(text_e, '\b(?:\d[ -]?){12,18}\d\b', '<CARD>', 'g'),
                    '(?:\+?\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}\b', '<PHONE>', 'g')
            else text_e
        end as text
    from emails_masked
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
    intent,
    reply,
    filter_reason
from checked;

create or replace view int_messages as
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
from int_messages_data
