-- Everything that makes up the installed payledger schema, one line per fact,
-- independent of the order of the install script.
SELECT 'member: ' || pg_describe_object(classid, objid, objsubid)
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'payledger')
UNION ALL
SELECT 'function: ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid))
       || ' acl ' || coalesce(p.proacl::text, '-') || ' config ' || coalesce(p.proconfig::text, '-')
  FROM pg_proc p WHERE p.pronamespace = 'payledger'::regnamespace AND p.prokind IN ('f', 'p')
UNION ALL
SELECT 'column: ' || c.table_name || '.' || c.column_name || ' ' || c.data_type || ' default '
       || coalesce(c.column_default, '-') || ' null ' || c.is_nullable || ' position ' || c.ordinal_position
  FROM information_schema.columns c WHERE c.table_schema = 'payledger'
UNION ALL
SELECT 'constraint: ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'payledger'::regnamespace
UNION ALL
SELECT 'index: ' || indexdef FROM pg_indexes WHERE schemaname = 'payledger'
UNION ALL
SELECT 'trigger: ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE NOT t.tgisinternal AND c.relnamespace = 'payledger'::regnamespace
UNION ALL
SELECT 'relation: ' || c.relname || ' ' || c.relkind::text || ' rls ' || c.relrowsecurity || ' acl ' || coalesce(c.relacl::text, '-')
       || ' options ' || coalesce(c.reloptions::text, '-')
  FROM pg_class c WHERE c.relnamespace = 'payledger'::regnamespace
UNION ALL
SELECT 'view: ' || viewname || ' ' || md5(definition) FROM pg_views WHERE schemaname = 'payledger'
UNION ALL
SELECT 'policy: ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || roles::text || ' ' || coalesce(qual, '-')
  FROM pg_policies WHERE schemaname = 'payledger'
UNION ALL
SELECT 'type: ' || t.typname || ' ' || t.typtype::text FROM pg_type t
 WHERE t.typnamespace = 'payledger'::regnamespace AND t.typtype NOT IN ('b') AND t.typrelid = 0
UNION ALL
SELECT 'config_dump: ' || c::regclass || ' ' || coalesce(w, '')
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(c, w) WHERE e.extname = 'payledger'
UNION ALL
SELECT 'schema acl: ' || coalesce(nspacl::text, '-') FROM pg_namespace WHERE nspname = 'payledger'
UNION ALL
SELECT 'enum: ' || t.typname || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
  FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
 WHERE t.typnamespace = 'payledger'::regnamespace GROUP BY t.typname
UNION ALL
SELECT 'seed: payin_transitions ' || string_agg(format('%s>%s:%s', from_state, to_state, default_reason), ','
                                                ORDER BY from_state, to_state)
  FROM payledger.payin_transitions
UNION ALL
SELECT 'seed: account_kinds ' || string_agg(kind || coalesce(':' || module, ''), ',' ORDER BY kind) FROM payledger.account_kinds
ORDER BY 1;
